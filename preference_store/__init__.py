"""The clinician preference store: every judgment from the app, its pairs, ratings and exports.

``repository.PreferenceStore`` is the API (plain dataclasses from ``records`` in and out), one module
of ``repository/`` per concern (accounts, checkpoints, comparisons, judgments, leaderboard, exports);
``export.export_pairs`` writes de-identified pairs for ChiMed-DPO; ``models`` and ``migrations``
hold the schema.
"""
