"""The one-command demo (run.py) and its report (report.py)."""

from clarep_fast.pipeline.demo.run import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
