"""MEDN: Multi-task Encoder-Decoder Network for module latency regression.

The reference paper (Shen et al., IIP 2024) names MEDN but gives no architecture; this is ours:

* input: the op's feature vector, standardised per task (op type) and zero-padded to the widest
  op's width, concatenated with a learned op-type embedding;
* a shared **encoder** (two SiLU layers) to a latent code;
* a **decoder** that reconstructs the standardised input features from the latent code (an
  autoencoder regulariser: the latent code must keep the module's description, not only what
  one batch of latencies needs);
* one small **latency head per task** (latent -> ``head_dim`` -> 1) plus a per-task **linear path**
  from the standardised features (``linear_skip``): the log-linear trend (latency ~ FLOPs, bytes
  moved) that the head only corrects, and that extrapolates linearly beyond the training range.

Loss = the error in log-latency (``loss_space="log"``: every task is scaled by one pooled spread, so
an op whose latencies span five decades is fitted as tightly as one that spans one; acc10 judges
log errors alike across ops), through a Huber loss (``huber_delta``, in units of that spread: the
slow episodes of a noisy machine pull less on the bulk) + ``recon_weight`` x masked MSE of the
reconstruction. Adam, mini-batches, the learning rate halved when the validation loss stalls
(``lr_decay``), early stopping on a per-task validation split, best weights restored. Seeds make
training deterministic. One network serves every op type (multi-task: pass ``tasks``); it can also
be trained on one type alone (``tasks=None``). About 50k parameters for 19 op types.

On the 9,161-sample CPU store, 5-fold grouped cross-validation: the first version (per-task
standardised MSE, no linear path, fixed learning rate) reached 54.0% acc10; the log-space loss 57.2%,
+ the linear path 62.1%, + a halving learning rate 65.0%, and all of these with the Huber loss (the
default) 69.8%, MAPE 9.7% — the most accurate single family there (GP-only 66.6%); auto-selection with it
reaches 71.4% (``bench/medn_variants.py``, ``latpred train``, docs/benchmarks.md). Files written before these
options load with their original settings.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import SpecError

__all__ = ["MEDNRegressor"]


def _tasks(tasks: Any, n: int) -> np.ndarray:
    if tasks is None:
        return np.zeros(n, dtype=np.int64)
    t = np.asarray(tasks)
    if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer) or (n and t.min() < 0):
        raise SpecError(f"tasks must be {n} non-negative integers (one op-type index per row)")
    return t.astype(np.int64)


#: rows per network call in :meth:`MEDNRegressor.predict` (activations of a chunk stay in the caches)
_CHUNK = 16384

#: what a file written before an option existed was trained with (its params do not name the option)
_LEGACY = {"head_dim": 32, "loss_space": "standardised", "huber_delta": None, "linear_skip": False, "lr_decay": None}


class MEDNRegressor(RegressorMixin, BaseEstimator):
    """Multi-task encoder-decoder latency regressor (scikit-learn compatible).

    ``X`` rows may be NaN-padded (multi-task: each op type uses its own leading columns).
    ``fit(X, y, tasks=None)`` / ``predict(X, tasks=None)``: ``tasks`` gives each row's op-type index.
    """

    def __init__(self, latent_dim: int = 48, hidden_dim: int = 128, embed_dim: int = 8, head_dim: int = 32,
                 recon_weight: float = 0.1, lr: float = 3e-3, batch_size: int = 256, max_epochs: int = 1500,
                 patience: int = 100, val_fraction: float = 0.1, weight_decay: float = 1e-5, loss_space: str = "log",
                 huber_delta: float | None = 0.05, linear_skip: bool = True, lr_decay: float | None = 0.5,
                 random_state: int = 0) -> None:
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.embed_dim = embed_dim
        self.head_dim = head_dim
        self.recon_weight = recon_weight
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.weight_decay = weight_decay
        self.loss_space = loss_space
        self.huber_delta = huber_delta
        self.linear_skip = linear_skip
        self.lr_decay = lr_decay
        self.random_state = random_state

    # -- network ------------------------------------------------------------------------------
    def _build(self, n_features: int, n_tasks: int) -> Any:
        import torch
        from torch import nn

        skip = bool(self.linear_skip)
        head = int(self.head_dim)

        class Net(nn.Module):
            def __init__(s) -> None:
                super().__init__()
                s.embed = nn.Embedding(n_tasks, self.embed_dim)
                s.encoder = nn.Sequential(nn.Linear(n_features + self.embed_dim, self.hidden_dim), nn.SiLU(),
                                          nn.Linear(self.hidden_dim, self.latent_dim), nn.SiLU())
                s.decoder = nn.Sequential(nn.Linear(self.latent_dim, self.hidden_dim), nn.SiLU(),
                                          nn.Linear(self.hidden_dim, n_features))
                s.w1 = nn.Parameter(torch.randn(n_tasks, self.latent_dim, head) / self.latent_dim ** 0.5)
                s.b1 = nn.Parameter(torch.zeros(n_tasks, head))
                s.w2 = nn.Parameter(torch.randn(n_tasks, head) / head ** 0.5)
                s.b2 = nn.Parameter(torch.zeros(n_tasks))
                # per-task linear path from the standardised features to the output: the log-linear trend
                # (latency ~ FLOPs, bytes) the heads then only correct; it also extrapolates linearly
                s.skip = nn.Parameter(torch.zeros(n_tasks, n_features)) if skip else None

            def forward(s, x: torch.Tensor, t: torch.Tensor, decode: bool = True) -> tuple[torch.Tensor, Any]:
                z = s.encoder(torch.cat([x, s.embed(t)], dim=1))
                # rows sorted by task once, then one small matmul per task on a contiguous slice (masks and
                # scattered writes per task cost more than the heads' arithmetic)
                order = torch.argsort(t, stable=True)
                zs = z[order]
                parts, start = [], 0
                for k, c in enumerate(torch.bincount(t, minlength=n_tasks).tolist()):
                    if c:
                        h = torch.nn.functional.silu(torch.addmm(s.b1[k], zs[start:start + c], s.w1[k]))
                        y = torch.mv(h, s.w2[k]) + s.b2[k]
                        parts.append(y if s.skip is None else y + torch.mv(x[order[start:start + c]], s.skip[k]))
                    start += c
                out = torch.empty(x.shape[0], dtype=z.dtype)
                if parts:
                    out[order] = torch.cat(parts)
                return out, (s.decoder(z) if decode else None)  # the decoder only regularises training

        return Net()

    # -- data ---------------------------------------------------------------------------------
    def _normalise(self, X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        missing = np.isnan(X)
        Z = X - self.x_mean_[t]  # in float64: some features have a tiny spread around a large mean
        Z /= self.x_std_[t]
        Z[missing] = 0.0
        return Z.astype(np.float32), ~missing

    def fit(self, X: Any, y: Any, tasks: Any = None) -> MEDNRegressor:
        import torch

        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[0] < 2:
            raise SpecError(f"MEDN needs X of shape (n>=2, d) and y of length n; got {X.shape} and {y.shape}")
        if not np.all(np.isfinite(y)):
            raise SpecError("MEDN: y has non-finite values")
        if self.loss_space not in ("standardised", "log"):
            raise SpecError(f"MEDN loss_space must be 'standardised' or 'log', got {self.loss_space!r}")
        if self.huber_delta is not None and not self.huber_delta > 0:
            raise SpecError(f"MEDN huber_delta must be positive or None, got {self.huber_delta!r}")
        if self.lr_decay is not None and not 0 < self.lr_decay < 1:
            raise SpecError(f"MEDN lr_decay must lie in (0, 1) or be None, got {self.lr_decay!r}")
        t = _tasks(tasks, X.shape[0])
        n_tasks = int(t.max()) + 1
        d = X.shape[1]
        self.n_features_in_ = d
        self.n_tasks_ = n_tasks
        self.x_mean_ = np.zeros((n_tasks, d))
        self.x_std_ = np.ones((n_tasks, d))
        self.y_mean_ = np.zeros(n_tasks)
        self.y_std_ = np.ones(n_tasks)
        for k in range(n_tasks):
            rows = X[t == k]
            if not len(rows):
                continue
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # padding columns are all-NaN for this task
                m = np.nanmean(rows, axis=0)
                s = np.nanstd(rows, axis=0)
            self.x_mean_[k] = np.nan_to_num(m)
            self.x_std_[k] = np.where(np.isfinite(s) & (s > 1e-9), s, 1.0)
            self.y_mean_[k] = y[t == k].mean()
            self.y_std_[k] = max(y[t == k].std(), 1e-6)
        if self.loss_space == "log":
            # one scale for every task (the pooled spread around each task's mean): the loss is then the
            # error in log-latency itself, which is what acc10 judges, instead of an error relative to each
            # op's spread (an op whose latencies span 5 decades would otherwise be fitted 5x less tightly)
            present = np.unique(t)
            self.y_std_[:] = max(float(np.sqrt(np.mean((y - self.y_mean_[t]) ** 2))), 1e-6)
            self.y_std_[np.setdiff1d(np.arange(n_tasks), present)] = 1.0
        Z, mask = self._normalise(X, t)
        ys = ((y - self.y_mean_[t]) / self.y_std_[t]).astype(np.float32)

        rng = np.random.default_rng(self.random_state)
        val = np.zeros(len(y), dtype=bool)
        for k in range(n_tasks):  # per-task validation split
            idx = np.flatnonzero(t == k)
            n_val = int(round(len(idx) * self.val_fraction)) if len(idx) >= 10 else 0
            val[rng.choice(idx, n_val, replace=False)] = True
        tr = np.flatnonzero(~val)
        va = np.flatnonzero(val)

        torch.manual_seed(self.random_state)
        net = self._build(d, n_tasks)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=self.lr_decay, patience=max(self.patience // 4, 1))
                 if self.lr_decay else None)
        Zt, Mt, Yt, Tt = (torch.from_numpy(Z), torch.from_numpy(mask.astype(np.float32)), torch.from_numpy(ys),
                          torch.from_numpy(t))

        def loss_of(idx: np.ndarray) -> torch.Tensor:
            i = torch.from_numpy(idx)
            pred, recon = net(Zt[i], Tt[i])
            m = Mt[i]
            rec = (((recon - Zt[i]) ** 2) * m).sum() / m.sum().clamp(min=1.0)
            err = pred - Yt[i]
            if self.huber_delta is None:
                fit_loss = (err ** 2).mean()
            else:  # robust: a few slow episodes in the data pull less on the bulk that acc10 counts
                fit_loss = torch.nn.functional.huber_loss(err, torch.zeros_like(err), delta=self.huber_delta)
            return fit_loss + self.recon_weight * rec

        best, best_state, waited = float("inf"), None, 0
        self.n_epochs_ = 0
        for epoch in range(self.max_epochs):
            net.train()
            order = rng.permutation(tr)
            for start in range(0, len(order), self.batch_size):
                opt.zero_grad()
                loss_of(order[start:start + self.batch_size]).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                score = float(loss_of(va if len(va) else tr))
            self.n_epochs_ = epoch + 1
            if sched is not None:
                sched.step(score)
            if score < best - 1e-5:
                best, waited = score, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        self.state_ = {k: v.numpy().copy() for k, v in net.state_dict().items()}
        self.module_ = None  # rebuilt from state_ (with its per-task head views) on the first predict
        self.best_val_loss_ = best
        return self

    def _net(self) -> Any:
        module = getattr(self, "module_", None)
        if module is None:
            import torch

            module = self._build(self.n_features_in_, self.n_tasks_)
            module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.state_.items()})
            module.eval()
            with torch.no_grad():  # per-task head parameters, indexed once (tensor indexing costs ~10 us a call)
                module.heads = [(module.b1[k].detach(), module.w1[k].detach(), module.w2[k].detach())
                                for k in range(self.n_tasks_)]
                module.head_bias = module.b2.detach().numpy().astype(np.float64)  # per task, added by gather
            self.module_ = module
        return module

    def predict(self, X: Any, tasks: Any = None) -> np.ndarray:
        check_is_fitted(self, "state_")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise SpecError(f"MEDN expects {self.n_features_in_} features, got shape {X.shape}")
        t = _tasks(tasks, X.shape[0])
        if len(t) and t.max() >= self.n_tasks_:
            raise SpecError(f"MEDN was trained on {self.n_tasks_} task(s); got task index {int(t.max())}")
        if not len(t):
            return np.empty(0)
        # rows are processed in task runs: the Predictor already sends each op type's rows together, so
        # a sort (and the gathers it costs) only happens for interleaved input
        order = None
        starts = np.flatnonzero(np.concatenate(([True], t[1:] != t[:-1])))
        if len(starts) != len(set(t[starts].tolist())):
            order = np.argsort(t, kind="stable")
            X, t = X[order], t[order]
        # in chunks: a graph's specs x 1,000 conditions are ~50k rows, whose activations (27 MB for the first
        # layer) would otherwise leave the caches between layers and be page-faulted into fresh buffers each call
        # (54,000 rows of resnet50 on cpu2-avx2: 39-48 ms median in one piece, 24-32 ms in chunks of 4,096-16,384)
        pred = np.empty(len(t))
        for a in range(0, len(t), _CHUNK):
            pred[a:a + _CHUNK] = self._predict_runs(X[a:a + _CHUNK], t[a:a + _CHUNK])
        if order is None:
            return pred
        out = np.empty_like(pred)
        out[order] = pred
        return out

    def _predict_runs(self, X: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Predictions for rows ``X`` whose task indices ``t`` come in runs (one run per task)."""
        import torch

        starts = np.flatnonzero(np.concatenate(([True], t[1:] != t[:-1])))
        bounds = np.append(starts, len(t)).tolist()
        runs = [(int(t[a]), a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        net = self._net()
        d = self.n_features_in_
        with torch.inference_mode():
            # standardise against each row's task mean/std, with the op-type embedding written in place of the
            # network's concatenation (gathers by task: fewer numpy calls than one per run)
            emb = net.embed.weight.detach().numpy()
            Z64 = X - self.x_mean_[t]  # in float64: some features have a tiny spread around a large mean
            Z64 *= (1.0 / self.x_std_)[t]
            Z64[np.isnan(Z64)] = 0.0
            Zc = np.empty((len(t), d + emb.shape[1]), dtype=np.float32)
            Zc[:, :d] = Z64
            Zc[:, d:] = emb[t]
            Zt = torch.from_numpy(Zc)
            z = net.encoder(Zt)
            # the heads write into one buffer, one SiLU over all of it (fewer small ops than Net.forward)
            h = torch.empty(len(t), int(self.head_dim))
            heads = net.heads
            for k, a, b in runs:
                torch.addmm(heads[k][0], z[a:b], heads[k][1], out=h[a:b])
            torch.nn.functional.silu(h, inplace=True)
            y = torch.empty(len(t))
            for k, a, b in runs:
                torch.mv(h[a:b], heads[k][2], out=y[a:b])
            if net.skip is not None:
                skip = net.skip.detach()
                for k, a, b in runs:
                    y[a:b] += torch.mv(Zt[a:b, :d], skip[k])
            pred = y.numpy().astype(np.float64)
        return (pred + net.head_bias[t]) * self.y_std_[t] + self.y_mean_[t]

    # -- persistence (no pickle) -------------------------------------------------------------
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able config, named float arrays) — saved with safetensors by the Predictor."""
        check_is_fitted(self, "state_")
        arrays = {f"net.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in self.state_.items()}
        arrays.update(x_mean=self.x_mean_, x_std=self.x_std_, y_mean=self.y_mean_, y_std=self.y_std_)
        config = {"params": self.get_params(), "n_features_in": int(self.n_features_in_),
                  "n_tasks": int(self.n_tasks_), "n_epochs": int(self.n_epochs_)}
        return config, {k: np.ascontiguousarray(v) for k, v in arrays.items()}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> MEDNRegressor:
        """Rebuild a fitted regressor from :meth:`to_state` output."""
        m = cls(**{**_LEGACY, **config["params"]})
        m.n_features_in_ = int(config["n_features_in"])
        m.n_tasks_ = int(config["n_tasks"])
        m.n_epochs_ = int(config.get("n_epochs", 0))
        m.x_mean_, m.x_std_ = np.asarray(arrays["x_mean"], float), np.asarray(arrays["x_std"], float)
        m.y_mean_, m.y_std_ = np.asarray(arrays["y_mean"], float), np.asarray(arrays["y_std"], float)
        m.state_ = {k[4:]: np.asarray(v) for k, v in arrays.items() if k.startswith("net.")}
        m.module_ = None
        m._net()  # validates shapes now rather than at first predict
        return m

    def n_parameters(self) -> int:
        check_is_fitted(self, "state_")
        return int(sum(np.asarray(v).size for v in self.state_.values()))
