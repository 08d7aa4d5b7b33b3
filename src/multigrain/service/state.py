"""The state the HTTP service's endpoints share: model, index, locks and the micro-batcher.

* One ``threading.Lock`` serialises every index access (search, add, remove, save). A Flat
  search over a small index takes microseconds next to the model's forward pass, which runs
  outside the lock, so a read-write lock would buy little.
* Group commit: an add or remove answers only once a save that includes it has finished,
  but edits made while a save runs share the next save (:meth:`Service.persist`). Saving
  after every edit rewrote the whole index once per request, and the saves, not the model,
  bounded the service's throughput under concurrent adds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from multigrain.data.images import decode_image
from multigrain.data.resize import prepare
from multigrain.models import MultiGrain
from multigrain.search.index import ImageIndex
from multigrain.search.index_store import save_index
from multigrain.search.whitening import Whitening
from multigrain.service.batching import MicroBatcher


@dataclass
class Service:
    """Everything the endpoints share; index access only under ``lock``."""

    model: MultiGrain
    classes: list[str]
    index: ImageIndex
    index_folder: Path
    data_dir: Path
    resolution: int
    token: str | None
    max_upload_bytes: int
    max_pixels: int
    device: torch.device
    request_timeout: float | None = None  # seconds; None: no limit
    threshold: float | None = None  # calibrated on raw scores; marks hits as matches
    max_batch: int = 16
    batch_wait_s: float = 0.005
    whitening: Whitening | None = None  # the bundle's, when the index holds whitened rows
    batcher: MicroBatcher = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)
    save_lock: threading.Lock = field(default_factory=threading.Lock)
    edits: int = 0  # index edits so far, under `lock`
    saved_edits: int = 0  # edits the files on disk hold, under `save_lock`

    def __post_init__(self) -> None:
        self.batcher = MicroBatcher(
            self.forward, max_batch=self.max_batch, max_wait_s=self.batch_wait_s
        )

    def load_input(self, image_path: Path) -> torch.Tensor:
        """Image file -> (3, H, W) model input, longest side s."""
        image = decode_image(image_path, longest_side=self.resolution, max_pixels=self.max_pixels)
        return prepare(image, self.resolution)

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> ((B, d) float32 unit descriptors, whitened when the index is, and
        (B, classes) logits of the raw embedding)."""
        embedding, logits = self.model(batch.to(self.device))
        embedding = embedding.float()
        if self.whitening is not None:
            descriptors = self.whitening.apply(embedding)
        else:
            descriptors = F.normalize(embedding, dim=1)
        return descriptors.cpu(), logits.float().cpu()

    def persist(self, edit: int) -> None:
        """Return once the index on disk holds edit number `edit` (group commit).

        Callers make their edit under `lock`, take its number from `edits`, release `lock`
        and call this: the first caller to get `save_lock` saves every edit made so far,
        and callers whose edit it covered return without saving again.
        """
        with self.save_lock:
            if self.saved_edits >= edit:
                return  # a save that started after this edit already wrote it
            with self.lock:
                latest = self.edits
                save_index(self.index, self.index_folder)
            self.saved_edits = latest

    def path_of(self, image_id: int) -> str | None:
        with self.lock:
            rows = np.flatnonzero(self.index.ids == image_id)
            return self.index.paths[int(rows[0])] if rows.size else None
