"""_journal layer: the journal actor, its storage backends, opening and repair.

``records`` (abstractions) ← ``planner`` (index scans) ← ``memory`` and
``rocks`` (backends; only ``rocks`` imports rocksdict) ← ``factory``
(``open_journal``, ``repair``) and ``actor`` (``JournalActor``).
"""

from actors._journal.factory import RecoveryReport, open_journal, repair

__all__ = ["RecoveryReport", "open_journal", "repair"]
