"""The DirectRunner of hemaflow's Beam work runs in process and never fetches Prism."""

from __future__ import annotations

import pytest

from hemaflow.beam import pipeline_options, resolve_runner


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """Every Prism start or download attempt (each also fails, as it would offline)."""
    import urllib.request

    from apache_beam.runners.portability import prism_runner

    attempts: list[str] = []

    def refuse(what: str):
        def call(*args, **kwargs):
            attempts.append(what)
            raise RuntimeError(f"{what}: no network in this test")

        return call

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", refuse("PrismRunner"))
    monkeypatch.setattr(
        prism_runner.PrismJobServer, "_download_to_local_path", staticmethod(refuse("download"))
    )
    monkeypatch.setattr(prism_runner, "urlopen", refuse("urlopen"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse("urlopen"))
    return attempts


def _double(options) -> None:
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    with beam.Pipeline(options=options) as pipeline:
        doubled = pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: 2 * x)
        assert_that(doubled, equal_to([2, 4, 6]))


def test_direct_runner_runs_in_process_without_any_download(downloads):
    _double(pipeline_options("DirectRunner", ["--direct_num_workers=1"]))
    assert downloads == []


def test_beams_own_direct_runner_would_try_prism_first(downloads):
    """The control: the name handed to Beam unchanged goes to Prism before falling back."""
    from apache_beam.options.pipeline_options import PipelineOptions

    _double(PipelineOptions(["--runner=DirectRunner"]))
    assert downloads == ["PrismRunner"]


def test_other_runners_pass_through():
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    for name in ("DirectRunner", "direct", "SwitchingDirectRunner",
                 "apache_beam.runners.direct.direct_runner.DirectRunner"):  # fmt: skip
        assert resolve_runner(name) == "FnApiRunner", name
    for name in ("DataflowRunner", "FlinkRunner", "SparkRunner", "PrismRunner",
                 "BundleBasedDirectRunner"):  # fmt: skip
        assert resolve_runner(name) == name
    options = pipeline_options("DataflowRunner", ["--project=blood-lab"])
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).project == "blood-lab"
