"""A deterministic interleaving simulator for bluestreak (see ``docs/reliability.md``).

Several worker engines, an operator and a client run in one process, on one
in-memory database, under a virtual clock. Every database command passes a
scheduling point where a seeded random source delays it, fails it, loses
its reply, or holds it while its worker is frozen; workers are killed and
replaced at any await. After each run the invariants of ``DESIGN.md`` are
checked; a failing seed replays exactly.

    python -m tests.sim --seeds 200            # a sweep
    python -m tests.sim --seed 17 --trace      # one seed, with its trace
"""
