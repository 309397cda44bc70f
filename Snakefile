# l2ps — Level 2 Processing System as a Snakemake workflow.
#
#   snakemake --cores 4 --config parameter_file=/data/level2.prm
#   snakemake --profile profiles/slurm --config parameter_file=/data/level2.prm
#
# The parameter file (FORCE's LEVEL2 format) holds every processing option; its FILE_QUEUE
# names the queue. Every QUEUED line of the queue is one `level2` job (see rules/common.smk).
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/level2.smk"
include: "rules/report.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        pending_records(),
        REPORT_TARGETS,


onsuccess:
    print_run_summary()


onerror:
    print_run_summary()
