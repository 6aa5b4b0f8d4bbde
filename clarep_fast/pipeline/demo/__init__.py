"""The one-command demo (run.py), its report (report.py) and its pictures (figures.py)."""

from clarep_fast.pipeline.demo.run import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
