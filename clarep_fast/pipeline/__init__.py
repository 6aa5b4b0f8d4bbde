"""The pipeline layer: the method end to end, on top of the kernel library (which never imports it).

Stages, in the order the data flows (each imports only the ones before it; tests/test_layers.py):
    data      the default dataset and user data
    teacher   the class-conditional diffusion teacher: model, DDIM sampling and inversion, training
    clarid    CLARep search (CLARID) into a bank on disk, its figures and interpretability measures
    distill   CaDistill (and the CE baseline) student training from a bank
    evaluate  clean, adversarial and background-shift accuracy of a student
    demo      all of it on the embedded default, with a report
    cli       the ``clarep-fast`` command
Shared helpers: files (atomic, versioned, checked files), rundir (run folders: lock, config,
checkpoints), options (CLI flags from config dataclasses), distributed (torchrun).
Installed with the ``[pipeline]`` extra (diffusers, timm, torchattacks, matplotlib, scipy).
"""
