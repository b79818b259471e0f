"""The applications built on the loop, each a library module its command line calls:

    experiment  one simulated AL run: data + model + loop + outputs (``python -m jaxal.run``)
    seeds       several seeds of one run stacked on a leading axis and vmapped
    comparison  strategies x seeds, resumable, with the summary (``python -m jaxal.compare``)
    labelling   a person labels their own images (``python -m jaxal.label``)
    label_files   a labelling session's files: labels.csv, pending.json, session.json
    label_server  the labelling page: ``python -m jaxal.label serve`` (the ``ui`` extra)
    label_studio  Label Studio task export and import
    plots       learning curves and figures (``python -m jaxal.plot``)
    results     a run's files: metrics.csv, queries.jsonl, checkpoint, config.json
    rundir      an out dir's lock and the checks before anything is written to it
"""
