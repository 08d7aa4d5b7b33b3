"""The state the HTTP service's endpoints share: model, index, locks and the micro-batcher.

* Queries go through the one forward path: the upload is decoded and resized exactly as
  ``embed`` decodes a file (uint8, longest side s), and :meth:`Service.forward` runs
  :func:`multigrain.inference.embed.embed_batch` on the trunk that ``fast_trunk_for``
  built, so a query's descriptor equals the one ``embed`` stores for the same image.
* One ``threading.Lock`` serialises every index access (search, add, remove, save). A Flat
  search over a small index takes microseconds next to the model's forward pass, which runs
  outside the lock, so a read-write lock would buy little.
* Group commit: an add or remove answers only once a save that includes it has finished,
  but edits made while a save runs share the next save (:meth:`Service.persist`). Saving
  after every edit rewrote the whole index once per request, and the saves, not the model,
  bounded the service's throughput under concurrent adds.
* The service holds the index folder's lock (:mod:`multigrain.search.index_lock`) and its
  own temporary folder's (:mod:`multigrain.service.scratch`) until :meth:`Service.close`:
  no other process writes the index under it, and its temporary uploads are swept if it
  dies. Decodes share one memory budget (:mod:`multigrain.service.decode_budget`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fastapi import UploadFile

from multigrain.data.images import decode_image
from multigrain.data.resize import resize_longest_side, to_uint8_tensor
from multigrain.inference.embed import descriptors_from, embed_batch
from multigrain.inference.fast_trunk import Trunk
from multigrain.models import MultiGrain
from multigrain.runtime.folder_lock import FolderLock
from multigrain.search.index import ImageIndex
from multigrain.search.index_store import save_index
from multigrain.search.whitening import Whitening
from multigrain.service.batching import MicroBatcher
from multigrain.service.decode_budget import DecodeBudget, decode_cost
from multigrain.service.errors import NotInIndex
from multigrain.service.schemas import Hit
from multigrain.service.scratch import close_scratch
from multigrain.service.uploads import store_upload


@dataclass
class Service:
    """Everything the endpoints share; index access only under ``lock``."""

    model: MultiGrain  # eval mode, on `device`, p set (inference.prepare.prepare_model)
    trunk: Trunk  # fast_trunk_for(model, precision, device=device)
    classes: list[str]
    index: ImageIndex
    index_folder: Path
    data_dir: Path
    resolution: int
    token: str | None
    max_upload_bytes: int
    max_pixels: int
    device: torch.device
    index_lock: FolderLock  # held for the service's lifetime (lock_for_serving)
    scratch: FolderLock  # its folder holds this server's temporary uploads (open_scratch)
    decode_budget: DecodeBudget
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

    @property
    def uploads_dir(self) -> Path:
        """Where added images are kept (the only files the service ever deletes)."""
        return self.data_dir / "uploads"

    def store_upload(self, upload: UploadFile) -> Path:
        """The upload's bytes in data_dir/tmp/<server>/<uuid>.upload (uploads.store_upload)."""
        return store_upload(upload, self.scratch.folder, self.max_upload_bytes)

    def decode_cost(self, image_path: Path, longest_side: int | None = None) -> int:
        """Peak bytes of decoding the file for `longest_side` (default s): decode_budget.

        Raises ImageDecodeError when its header is unreadable.
        """
        side = longest_side or self.resolution
        return decode_cost(image_path, longest_side=side, max_pixels=self.max_pixels)

    def load_input(self, image_path: Path) -> torch.Tensor:
        """Image file -> (3, H, W) uint8 image, longest side s, decoded as ``embed`` does.

        Raises ImageDecodeError (ImageOverPixelLimit over ``max_pixels``).
        """
        image = decode_image(image_path, longest_side=self.resolution, max_pixels=self.max_pixels)
        return to_uint8_tensor(resize_longest_side(image, self.resolution))

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) uint8 -> ((B, d) float32 unit descriptors, whitened when the index
        is, and (B, classes) logits of the raw embedding), on the CPU."""
        embedding = embed_batch(self.model, self.trunk, batch, normalise_output=False)
        whitening = self.whitening.apply if self.whitening is not None else None
        descriptors = descriptors_from(embedding, whitening)
        logits = self.model.classifier(embedding)
        return descriptors.cpu(), logits.float().cpu()

    def search(self, descriptor: np.ndarray, k: int) -> list[Hit]:
        """(1, d) query -> its k best hits, marked against the threshold when there is one."""
        with self.lock:
            if len(self.index) == 0:
                return []
            result = self.index.search(descriptor, min(k, len(self.index)))
        return [
            Hit(
                id=int(i),
                path=p,
                score=float(s),
                match=None if self.threshold is None else bool(s >= self.threshold),
            )
            for i, p, s in zip(result.ids[0], result.paths[0], result.scores[0], strict=True)
            if i >= 0
        ]

    def add_image(self, descriptor: np.ndarray, path: Path) -> tuple[int, int]:
        """Index the (1, d) descriptor of the stored image `path`; returns (its id, images)
        once the index on disk holds it. `path` is deleted if the index refuses it."""
        with self.lock:
            try:
                ids = self.index.add(descriptor, [str(path)])
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            self.edits += 1
            edit, count = self.edits, len(self.index)
        self.persist(edit)
        return int(ids[0]), count

    def remove_image(self, image_id: int) -> int:
        """Drop image `image_id` (and its file, if the service stored it); returns the images
        left, once the index on disk has the change. Raises NotInIndex."""
        with self.lock:
            rows = np.flatnonzero(self.index.ids == image_id)
            if rows.size == 0:
                raise NotInIndex(f"no image with id {image_id} in the index")
            path = Path(self.index.paths[int(rows[0])])
            self.index.remove([image_id])
            self.edits += 1
            edit, count = self.edits, len(self.index)
        self.persist(edit)
        if path.parent == self.uploads_dir:  # only files the service itself stored
            path.unlink(missing_ok=True)
        return count

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

    def close(self) -> None:
        """Free the index folder for other writers and remove the temporary folder."""
        close_scratch(self.scratch)
        self.index_lock.release()

    def path_of(self, image_id: int) -> str | None:
        with self.lock:
            rows = np.flatnonzero(self.index.ids == image_id)
            return self.index.paths[int(rows[0])] if rows.size else None
