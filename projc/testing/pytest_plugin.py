"""pytest plugin (entry point ``pytest11: projc``): ONNX models as parity tests.

``pytest --projc-models DIR`` adds one test per ``.onnx`` file under DIR (a file or a glob works
too; repeatable): projc's forward against onnxruntime on random inputs, or against the goldens
stored beside the model (``MODEL.expected.npz``, or ``test_data_set_*`` beside the folder's only
model), exactly as ``projc compare MODEL`` decides. ``--projc-atol``/``--projc-rtol`` set the
tolerances (default 1e-5; float16 1e-3), ``--projc-batch``/``--projc-seed`` the random inputs. A
mismatch fails with the per-output table; a model that cannot be compared fails with the error.

The ``projc_parity`` fixture checks a model from a hand-written test::

    def test_logits(projc_parity):
        report = projc_parity("m.onnx", inputs={"x": x}, atol=1e-4, outputs=["logits"])

It returns the ``projc.cli.compare.CompareReport`` and fails the test with the table when an
output differs (or with the one-line error when the model cannot be compared).

Without ``--projc-models`` the plugin collects nothing and imports nothing heavy (no JAX, no
onnx), so a test session that does not use it is not slowed down.
"""
from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from projc.cli.compare_many import CompareOptions


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("projc", "projc: ONNX models checked against onnxruntime")
    group.addoption("--projc-models", action="append", default=[], metavar="DIR",
                    help="collect every .onnx under DIR (or a file, or a glob) as a parity test "
                    "against onnxruntime, or against the goldens beside it (repeatable)")
    group.addoption("--projc-atol", type=float, default=None, metavar="ATOL",
                    help="absolute tolerance of the parity tests (default 1e-5; float16 1e-3)")
    group.addoption("--projc-rtol", type=float, default=None, metavar="RTOL",
                    help="relative tolerance of the parity tests (default 1e-5; float16 1e-3)")
    group.addoption("--projc-batch", type=int, default=None, metavar="N",
                    help="batch size of the random inputs (default 3)")
    group.addoption("--projc-seed", type=int, default=1, metavar="SEED",
                    help="seed of the random inputs (default 1)")


def _options(config: pytest.Config, **overrides):
    from projc.cli.compare import check_options
    from projc.cli.compare_many import CompareOptions
    from projc.errors import ProjcError

    values = dict(atol=config.getoption("projc_atol"), rtol=config.getoption("projc_rtol"),
                  seed=config.getoption("projc_seed"), batch=config.getoption("projc_batch"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        check_options(**values)
    except ProjcError as err:
        raise pytest.UsageError(str(err).replace("--", "--projc-", 1)) from None
    return CompareOptions(**values)


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection, which then applies to these tests too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    paths = config.getoption("projc_models")
    if not paths:
        return
    from projc.cli.compare_many import find_models
    from projc.errors import ProjcError

    options = _options(config)
    try:
        models = find_models(paths)
    except ProjcError as err:
        raise pytest.UsageError(f"--projc-models: {err}") from None
    for path in models:
        model = ModelFile.from_parent(session, path=pathlib.Path(path).resolve())
        model.options, model.display = options, path
        # collected through the hooks pytest's own collection calls, so that the terminal counts
        # these tests and -k/-m/--deselect (which run after this hook) apply to them
        session.ihook.pytest_collectstart(collector=model)
        report = session.ihook.pytest_make_collect_report(collector=model)
        report.__dict__.pop("call", None)
        session.ihook.pytest_collectreport(report=report)
        if report.passed:
            items.extend(report.result)


class ModelFile(pytest.File):
    """An .onnx file found by --projc-models: one parity test."""

    options: CompareOptions | None = None
    display: str | None = None  # the path as found from --projc-models (messages name it)

    def collect(self):
        yield ParityItem.from_parent(self, name="parity")


class ParityFailure(Exception):
    """An output differs (the message is the per-output tables) or the model cannot be compared
    (the message is the error)."""


class ParityItem(pytest.Item):
    """``projc compare MODEL`` as a test."""

    def runtest(self) -> None:
        from projc.cli.compare_many import ERROR, FAILED, run_model

        parent = self.parent
        assert isinstance(parent, ModelFile) and parent.options is not None  # set when collected
        result = run_model(parent.display or str(self.path), parent.options)
        self.user_properties.append(("reference", result.reference))
        for note in result.notes:
            self.add_report_section("call", "projc note", note)
        if result.status == FAILED:
            raise ParityFailure(f"{result.reason}\n\n{result.tables()}")
        if result.status == ERROR:
            raise ParityFailure(f"projc compare: error: {result.message}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ParityFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"projc parity: {self.path.name}"


@pytest.fixture
def projc_parity(request: pytest.FixtureRequest):
    """``check(model, inputs=None, *, atol=None, rtol=None, outputs=None, batch=None, seed=None,
    dims=None, expected=None)``: projc's forward of ``model`` (a path) against onnxruntime on
    ``inputs`` (a dict keyed by ONNX input names; random when None), or against ``expected``
    (output name -> array, or a goldens path as ``projc compare --expected`` takes, whose stored
    inputs are used unless ``inputs`` is given). ``outputs`` selects the outputs compared.
    Returns the CompareReport (a list of them for a goldens folder of several data sets); fails
    the test with the per-output table when an output differs. Tolerances default to
    --projc-atol/--projc-rtol, else 1e-5 (float16 1e-3)."""
    config = request.config

    def check(model, inputs=None, *, atol=None, rtol=None, outputs=None, batch=None, seed=None,
              dims=None, expected=None):
        from projc.cli import goldens
        from projc.cli.compare import compare_model
        from projc.errors import ProjcError
        from projc.frontend.importer import read_model

        options = _options(config, atol=atol, rtol=rtol, batch=batch, seed=seed)
        kwargs = dict(atol=options.atol, rtol=options.rtol, seed=options.seed,
                      batch=options.batch, dims=dims, outputs=outputs)
        try:
            if isinstance(expected, (str, pathlib.Path)):
                source = read_model(model)
                reports = []
                for data in goldens.read_expected(str(expected), source.proto):
                    if inputs is None and data.inputs is None:
                        raise ProjcError(f"{data.label}: holds no inputs; pass inputs=")
                    reports.append(compare_model(
                        model, source=source, expected=data.outputs, expected_source=data.label,
                        inputs=inputs if inputs is not None else data.inputs, **kwargs))
            else:
                reports = [compare_model(model, inputs=inputs, expected=expected, **kwargs)]
        except ProjcError as err:
            pytest.fail(f"projc_parity: {err}", pytrace=False)
        if not all(r.ok for r in reports):
            pytest.fail("\n\n".join(r.format() for r in reports), pytrace=False)
        return reports[0] if len(reports) == 1 else reports

    return check
