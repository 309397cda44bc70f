"""Documentation that is generated must be current."""
import subprocess
import sys

from conftest import REPO


def test_deviations_page_is_up_to_date():
    res = subprocess.run([sys.executable, str(REPO / "tools" / "collect_deviations.py"), "--check"])
    assert res.returncode == 0, "run tools/collect_deviations.py to rebuild docs/deviations.md"
