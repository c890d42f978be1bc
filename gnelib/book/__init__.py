"""What chapters import: set-up (:func:`setup_chapter`), ``ch.run`` (registered experiments
through the store), glue/record, and the check helper (:func:`check`, :func:`checks_table`)."""
from gnelib.book.chapter import Chapter, Run, current_chapter, record, setup_chapter
from gnelib.book.checks import (CheckResult, bootstrap_se, check, checks_table, jackknife,
                                 extrapolate_inverse_width, ratio_se, reset_checks)

__all__ = ["Chapter", "Run", "current_chapter", "record", "setup_chapter", "CheckResult", "check",
           "checks_table", "reset_checks", "bootstrap_se", "ratio_se", "jackknife",
           "extrapolate_inverse_width"]
