# One job per QUEUED Level-1 image: the whole chain in memory (l2ps.pipeline), tiles written
# into the cube under per-file locks (tile files are side effects, never declared outputs).


rule level2:
    input:
        level1=level1_input,
    output:
        record=f"{LOGDIR}/records/{{image}}/run-{{run}}.json",
    log:
        f"{LOGDIR}/records/{{image}}/run-{{run}}.log",
    params:
        image=image_path,
        parameter_file=config["parameter_file"],
        version=l2ps.__version__,
        tempdir=str(PRM.dir_temp),
    threads: PRM.nthread
    # memory by sensor family (config.yaml `mem_mb`); wall time, partition and account
    # come from the profile's default-resources (profiles/slurm), the one place for them
    resources:
        mem_mb=mem_mb,
    wildcard_constraints:
        image=r"[^/]+",
        run=r"\d{4}",
    conda:
        "../envs/l2ps.yaml"
    script:
        "../scripts/level2.py"
