"""The command-line demos, one module per paper, each with ``main(argv) -> exit code`` and ``cli()`` (the console
entry point): ``unsplit-inversion`` (:mod:`~unsplit.demos.inversion`), ``unsplit-labels``
(:mod:`~unsplit.demos.labels`), ``unsplit-fsha`` (:mod:`~unsplit.demos.fsha`), ``unsplit-sladv``
(:mod:`~unsplit.demos.sladv`) and ``unsplit-sdar`` (:mod:`~unsplit.demos.sdar`). The top-level ``*_demo.py`` files
of the repository run the same code.
"""
__all__: list = []
