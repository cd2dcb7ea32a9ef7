"""Dataset readers. Every reader yields :class:`prn_data.records.Sample` at the original resolution.

A dataset object has: ``name`` (``"coco"``, ``"cityscapes"``, ``"synthetic"``), ``split``,
``categories`` (:class:`~prn_data.records.CategorySet`), ``__len__``, ``keys()`` (image ids in order),
``load(index) -> Sample``, ``orig_size(index) -> (h, w)`` (cheap, no pixel decode) and ``describe() -> dict``
(JSON-able spec recorded in a store, enough to reopen it with :func:`open_dataset`).
"""

from __future__ import annotations
