"""The Hugging Face hub: reachability, offline behaviour, and the `HubReader`.

Known datasets (`cifar10` -> `uoft-cs/cifar10`, ...) and `hf:<owner>/<name>` load with
`datasets.load_dataset`. Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or a failed 3 s TCP probe,
remembered for 60 s in `<cache>/hub-unreachable`) a copy already in the HF cache is used, else
the call fails within seconds with one sentence naming the local options (--data-dir,
MIXERBENCH_DATA, a folder path). Gated datasets (ImageNet-1k) say how to get access.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from mixerbench.data.sources import _hf_offline, _HFReader
from mixerbench.errors import UserError

HUB_MEMO_SECONDS = 60  # after a failed probe, do not retry the hub for a minute
HUB_PROBE_TIMEOUT = 3.0  # s, TCP connect to the hub endpoint


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline_by_env() -> bool:
    return any(_env_true(v) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(root: Path) -> bool:
    """False when offline mode is set, when a probe failed in the last minute, or when a probe fails now."""
    if hub_offline_by_env():
        return False
    memo = root / "hub-unreachable"
    try:
        if time.time() - memo.stat().st_mtime < HUB_MEMO_SECONDS:
            return False
    except OSError:
        pass
    from mixerbench.runtime import reachable

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    ok = reachable(endpoint, HUB_PROBE_TIMEOUT)
    if ok:
        memo.unlink(missing_ok=True)
    else:
        from mixerbench.files import atomic_write_text

        try:
            atomic_write_text(memo, f"{endpoint} unreachable at {time.time():.0f}\n")
        except OSError:  # only a memo: a cache that cannot be written is refused where it matters
            pass
    return ok


def hf_datasets_cache() -> Path:
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    from mixerbench.process import cache_home

    home = os.environ.get("HF_HOME") or cache_home() / "huggingface"
    return Path(home).expanduser() / "datasets"


class HubReader(_HFReader):
    kind = "hub"

    def __init__(self, hub_id: str, root: Path, image_column=None, label_column=None, gated=False,
                 config: str | None = None):
        self.hub_id, self.location, self.root, self.gated = hub_id, hub_id, root, gated
        self.config = config  # the hub dataset's config name, where it has several (SVHN)
        self.image_column, self.label_column = image_column or "image", label_column or "label"
        self._given = image_column, label_column
        self._loaded: dict[str, object] = {}
        self._names = None
        self._ready = False

    def cache_key(self):  # no network: a decoded copy in our cache is used offline
        config = f"|{self.config}" if self.config else ""  # keys of one-config sets unchanged
        return f"hub|{self.hub_id}{config}|{self._given}"

    def describe_source(self):
        config = f" (config {self.config})" if self.config else ""
        return f"hub https://huggingface.co/datasets/{self.hub_id}{config}"

    def _fail(self, exc: Exception | None = None):
        msg = str(exc or "").lower()
        if "gated" in msg or "401" in msg or "403" in msg or "authenticat" in msg:
            raise UserError(f"{self.hub_id} is gated on the Hugging Face hub: accept its terms at "
                            f"https://huggingface.co/datasets/{self.hub_id} and run `hf auth login`, "
                            f"or point --data-dir / MIXERBENCH_DATA at a local copy.") from None
        if exc is None or isinstance(exc, (ConnectionError, OSError)) or "offline" in msg or "connect" in msg:
            gated = " (gated: accept its terms on the hub and log in when online)" if self.gated else ""
            raise UserError(f"The Hugging Face hub is not reachable (offline), so {self.hub_id}{gated} cannot "
                            f"be fetched; use a local copy: --data-dir DIR or MIXERBENCH_DATA=DIR holding the "
                            f"dataset's folder, or a folder path.") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"Could not load {self.hub_id} from the Hugging Face hub ({first[:200]}); "
                        f"check the id or use a local copy (--data-dir, MIXERBENCH_DATA or a folder path).") from None

    def _call(self, fn):
        """Run a `datasets` call online, or offline from the HF cache, or fail fast with a UserError."""
        online = hub_reachable(self.root)
        ns = self.hub_id.split("/")
        cached = (hf_datasets_cache() / "___".join(ns[:-1] + [re.sub(r"(?<!^)(?=[A-Z])", "_", ns[-1]).lower()])).exists()
        if not online and not cached:
            self._fail(None)
        try:
            if online:
                return fn()
            with _hf_offline():
                return fn()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - translate every hub failure into one sentence
            self._fail(exc)

    def _split(self, split):
        if split not in self._loaded:
            import datasets

            ds = self._call(lambda: datasets.load_dataset(self.hub_id, self.config, split=split))
            if not self._ready:
                self._init_columns(ds.features, *self._given)
                self._ready = True
            self._loaded[split] = ds
        return self._loaded[split]

    def split_sizes(self):
        import datasets

        info = self._call(lambda: datasets.load_dataset_builder(self.hub_id, self.config).info)
        if info.features is not None and not self._ready:
            self._init_columns(info.features, *self._given)
            self._ready = True
        return {s: v.num_examples for s, v in (info.splits or {}).items()}
