"""The former name of the ask-ahead loop. Since issue 17 there is one loop,
``evomerge.loop.SearchLoop``, whose schedule asks ahead for drivers that can
(``Driver.can_ask_ahead``) and records the batch asked ahead in the store's ``pending`` table;
``AskAheadLoop`` remains as a name for it so code that imported it keeps working."""

from __future__ import annotations

from evomerge.loop import SearchLoop as AskAheadLoop

__all__ = ["AskAheadLoop"]
