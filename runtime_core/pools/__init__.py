"""Where a model's requests run: the :class:`~runtime_core.pools.base.ModelPool` interface
(``base``), its backends (``process``, ``inprocess``, ``ray``) and ``factory``, which chooses
one per model. Import the module you need:
this package imports none of them, so that a remote backend can implement ``base``
without loading process code."""
