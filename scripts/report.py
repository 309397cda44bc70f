"""Snakemake job script of rule `report`: update the STAC catalog for the tiles of this
run and write the run report (l2ps.report.report_job; `l2ps report DIR_LOG` does the
report alone)."""
import sys
from pathlib import Path

from l2ps.report import report_job

sys.exit(
    report_job(
        # DIR_LOG/report/l2ps-report-<stamp>.html → DIR_LOG
        dir_log=Path(snakemake.output.html).parent.parent,  # noqa: F821  (injected by Snakemake)
        dir_level2=snakemake.params.dir_level2,  # noqa: F821
        out_html=snakemake.output.html,  # noqa: F821
        records=list(snakemake.input.records),  # noqa: F821
        log=snakemake.log[0],  # noqa: F821
    )
)
