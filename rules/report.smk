# The run report (HTML + CSV over all job records in DIR_LOG) and the STAC catalog of the
# cube, once at the end of a run that had something to do (docs/report-stac.md).
# The output carries the time stamp of this invocation, so that every run gets its own
# report; with no QUEUED image there is no report job (REPORT_TARGETS is empty).
from datetime import datetime as _datetime

REPORT_STAMP = _datetime.now().strftime("%Y%m%d-%H%M%S")


# the report of this run (a target of `rule all`), or nothing when no image is QUEUED
REPORT_TARGETS = [f"{LOGDIR}/report/l2ps-report-{REPORT_STAMP}.html"] if PENDING else []


rule report:
    input:
        records=pending_records(),
    output:
        html=report(
            f"{LOGDIR}/report/l2ps-report-{{stamp}}.html",
            caption="../report/run-report.rst",
            category="Run report",
        ),
        csv=f"{LOGDIR}/report/l2ps-report-{{stamp}}.csv",
    log:
        f"{LOGDIR}/report/l2ps-report-{{stamp}}.log",
    params:
        dir_level2=str(PRM.dir_level2),
    wildcard_constraints:
        stamp=r"\d{8}-\d{6}",
    localrule: True
    conda:
        "../envs/l2ps.yaml"
    script:
        "../scripts/report.py"
