"""adafocus_pl.workers: jobs run in long-lived worker processes, with their CPU threads and their own console log."""

from __future__ import annotations

import os

import pytest

from adafocus_pl.workers import JobFailed, Workers


def test_a_worker_runs_jobs_with_their_threads_and_console_and_survives_a_failure(tmp_path):
    log = tmp_path / "job" / "console.log"
    with Workers(1) as workers:
        first = workers.submit("tests.helpers_workers:report", "hello", threads=2, log_file=log).result()
        second = workers.submit("tests.helpers_workers:report", "again", threads=1).result()
        with pytest.raises(JobFailed, match=rf"ValueError: broken.*{log.name}"):
            workers.submit("tests.helpers_workers:fail", "broken", log_file=log).result()
        third = workers.submit("tests.helpers_workers:report", "still here").result()
    assert first["pid"] == second["pid"] == third["pid"] != os.getpid()  # one process, imported once
    assert (first["threads"], second["threads"]) == (2, 1)
    text = log.read_text()
    assert "hello" in text and "to stderr" in text and "again" not in text  # only that job's console
    assert "ValueError: broken" in text  # the failed job's traceback is in its log
