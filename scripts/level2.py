"""Snakemake job script of rule `level2`: set thread counts, run one image, write its record.

Thin on purpose: everything else is in l2ps.job / l2ps.pipeline, which `l2ps level2 IMAGE
PRM` uses too. Exit status: 0 for DONE and for a FAIL caused by the input (an L2psError:
a retry would fail the same way); non-zero for a crash (Snakemake retries as configured).
"""
import os
import sys

threads = str(snakemake.threads)  # noqa: F821  (injected by Snakemake)
# Snakemake sets OMP_NUM_THREADS only; numba and GDAL read their own variables, and numba
# reads NUMBA_NUM_THREADS when it is first imported.
os.environ["NUMBA_NUM_THREADS"] = threads
os.environ["GDAL_NUM_THREADS"] = threads
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "l2ps-numba"))

from l2ps.job import run_job  # noqa: E402

sys.exit(
    run_job(
        image=snakemake.params.image,  # noqa: F821
        parameter_file=snakemake.params.parameter_file,  # noqa: F821
        record=snakemake.output.record,  # noqa: F821
        log=snakemake.log[0],  # noqa: F821
        nthreads=int(threads),
    )
)
