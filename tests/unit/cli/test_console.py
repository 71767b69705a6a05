"""The quiet terminal (rayrm.console.quiet) with the logging handlers libraries attach."""

from __future__ import annotations

import logging

from rayrm.console import quiet, say


def test_quiet_with_a_last_resort_kind_handler(tmp_path, capfd):
    # dill (a dependency of datasets, which TRL needs) attaches a handler of logging.lastResort's
    # class to its logger; its `stream` is a read-only property and must be left alone.
    logger = logging.getLogger("rayrm-test-last-resort")
    handler = type(logging.lastResort)(logging.WARNING)
    logger.addHandler(handler)
    try:
        with quiet(tmp_path / "run.log"):
            print("noise")
            logger.warning("library warning")
            say("shown")
    finally:
        logger.removeHandler(handler)
    out, err = capfd.readouterr()
    assert out == "shown\n" and err == ""
    log = (tmp_path / "run.log").read_text()
    assert "noise" in log and "library warning" in log
