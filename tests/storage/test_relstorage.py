"""ZBigArray under transactions on RelStorage, against a real PostgreSQL server.

The transaction tests of :mod:`tests.storage.test_transactions` (round trip,
abort, failed commit, conflicts, transaction managers) run again here with
`db` a RelStorage database, in both of its schema kinds: history-preserving
(RelStorage's default) and history-free.  Invalidation between two clients
and between two processes runs in test_invalidation.py and test_zeo.py, whose
fixtures include RelStorage.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import transaction
import ZODB

from tests.storage.conftest import empty_relstorage
from tests.storage.test_transactions import (  # noqa: F401  (collected here again)
    test_abort_discards,
    test_commit_stores_exactly_the_dirty_blocks,
    test_different_blocks_both_commit,
    test_explicit_transaction_managers,
    test_failed_commit_discards_and_stores_nothing,
    test_new_array_usable_before_first_commit,
    test_same_block_conflicts,
)
from zbigarray.storage import open_db

pytestmark = pytest.mark.relstorage


@pytest.fixture(params=[True, False], ids=["history", "history-free"])
def db(request: pytest.FixtureRequest, postgres_server: str) -> Iterator[ZODB.DB]:
    """An empty RelStorage database, opened through its zodburi URI."""
    d = open_db(empty_relstorage(postgres_server, keep_history=request.param))
    yield d
    transaction.abort()
    d.close()
