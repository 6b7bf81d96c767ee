"""Label a fleet's drive logs: every camera pair of many bags captioned into a Parquet dataset, on Ray Data.

    inputs.py      bags, folders of bags, manifests -> the bags to label
    pairs.py       a bag's frames paired by stamp with the node's own pairing code
    keys.py        bag and model identity; a row's key (what makes it unique)
    labeller.py    BagLabeller: one model replica labelling bags into rows (a Ray Data actor)
    pipeline.py    the Ray Data job, the workers it asks for, the rows streamed into LABELS
    store.py       LABELS: Parquet parts written atomically, each key once
    write_bags.py  --write-bags: each bag copied with /scene_caption and its marker in it
    search.py      `clip-vlm search`: DuckDB over LABELS
    progress.py    a bar on a terminal, lines in a log
    run.py         one `clip-vlm label` run, start to end
    bench.py       `python -m clip_vlm_core.label.bench`: throughput against a plain loop

Nothing here imports Ray until a run starts, and nothing imports rclpy.
"""
