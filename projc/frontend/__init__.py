"""The ONNX front end: the importer (``importer``: ONNX -> IR), its symbolic shape helpers and
import-time evaluation (``symbolic``, ``evaluate``), and the export of trained weights (``export``)."""
