"""Scripts of the project (run as files: `python scripts/NAME.py`); a package so that the tests can
import scripts/make_examples.py whatever else is installed under the name `scripts`."""
