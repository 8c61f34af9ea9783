"""Fusion: scaled behavioural features + the person's text embedding, weighted, then PCA.

Each feature is standardised; indicator columns of one categorical attribute share one column's
weight; the behaviour block as a whole gets `behaviour_weight` and the (unit-norm) text block
`text_weight`.

Fitted on the training frame and stored inside the persona model, so serving applies exactly
the training transformation. Missing blocks get a well-defined value rather than zeros that
would cluster together by accident:
- a person with little behaviour data (most features missing) but with text gets the mean
  behaviour of the `neighbours` reference people whose texts are nearest theirs;
- a person without text gets the mean text direction of the reference people whose behaviour is
  nearest theirs;
- what is still missing gets the training median (behaviour) or population mean (text).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CLIP_Z = 5.0
REFERENCE_SIZE = 3000
SPARSE_ROW = 0.5  # a row missing more than this share of behaviour features counts as "no behaviour"


def embedding_matrix(column: pd.Series | None, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack a column of vectors (lists/arrays/None) into (n, dim) float32 and a has-text mask."""
    out = np.zeros((n, dim), dtype=np.float32)
    mask = has_vector(column, n, dim)
    if mask.any():
        values = column.to_numpy()
        out[mask] = np.stack([np.asarray(values[i], dtype=np.float32) for i in np.flatnonzero(mask)])
    return out, mask


def has_vector(column: pd.Series | None, n: int, dim: int) -> np.ndarray:
    """Which rows of `column` hold a vector of length `dim` (the rows `embedding_matrix` fills)."""
    if column is None or dim == 0:
        return np.zeros(n, dtype=bool)
    return np.fromiter((v is not None and not (isinstance(v, float) and np.isnan(v)) and len(v) == dim for v in column.to_numpy()), dtype=bool, count=n)


def _knn_ids(queries: np.ndarray, reference: np.ndarray, k: int, metric: str) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(reference.shape[1]) if metric == "ip" else faiss.IndexFlatL2(reference.shape[1])
    index.add(np.ascontiguousarray(reference, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(reference)))[1]


def _knn_mean(queries: np.ndarray, reference: np.ndarray, values: np.ndarray, k: int, metric: str) -> np.ndarray:
    return values[_knn_ids(queries, reference, k, metric)].mean(axis=1)


# Persons are represented BLOCK_ROWS at a time: the (persons x features+384) float64 matrix of a
# block, not of everyone. A multiple of 4,096 rows, and a last block under 4,096 rows joins the one
# before: OpenBLAS then multiplies every row with the same kernel as one whole-frame product does,
# so the blocked representation equals the whole-frame one bit for bit (tests/unit/test_fusion_blocks.py).
BLOCK_ROWS = 65_536
_BLOCK_ALIGN = 4_096


def row_blocks(n: int, size: int = BLOCK_ROWS) -> list[tuple[int, int]]:
    """[start, stop) ranges covering n rows, `size` rows each (a last range under 4,096 rows is
    merged into the one before)."""
    bounds = list(range(0, n, max(size, 1))) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < _BLOCK_ALIGN:
        bounds.pop(-2)
    return list(zip(bounds[:-1], bounds[1:]))


class ParquetVectors:
    """The text vectors of a Parquet file's list column (a list of floats per row, null for none),
    read from the file a batch of rows at a time where `Fusion.transform` needs them, instead of
    held as a numpy array per row in a pandas column. Monitoring represents the champion's
    reference frame this way: the column of arrays was ~2.6 KB a person beside the current frame's
    (~3 GB at 1,000,000 people). The rows it gives are the float32 values `embedding_matrix` makes
    of the same column read by pandas, and a row has a vector where `has_vector` says so (not null,
    `dim` values), so the representation is the same bits."""

    def __init__(self, path, column: str = "text_embedding", batch_rows: int = BLOCK_ROWS):
        import pyarrow.parquet as pq

        self.path, self.column, self.batch_rows = str(path), column, batch_rows
        self.rows = pq.ParquetFile(self.path).metadata.num_rows
        self._row_lengths: np.ndarray | None = None  # lengths(), once read (a pass over the whole column)

    def __len__(self) -> int:
        return self.rows

    def _batches(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with pq.ParquetFile(self.path) as file:
                for batch in file.iter_batches(batch_size=self.batch_rows, columns=[self.column]):
                    yield batch.column(0)
        finally:
            # Arrow's allocator (mimalloc) keeps what a pass freed: without this the passes left
            # ~110 MiB (30,000 people) to ~230 MiB (100,000) more resident for the rest of the stage
            pa.default_memory_pool().release_unused()

    @staticmethod
    def _lengths(values) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        if pa.types.is_null(values.type):  # a column with no vector at all (sources without texts) is stored as nulls
            return np.full(len(values), -1, dtype=np.int64)
        return pc.fill_null(pc.list_value_length(values), -1).to_numpy(zero_copy_only=False)  # -1: null

    @staticmethod
    def _dense(values, has: np.ndarray, dim: int) -> np.ndarray:
        """(len(values), dim) float32: the vectors where `has`, zeros elsewhere."""
        import pyarrow as pa

        out = np.zeros((len(values), dim), dtype=np.float32)
        if has.any():
            picked = values.filter(pa.array(has)).flatten()
            out[has] = picked.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
        return out

    def lengths(self) -> np.ndarray:
        """Each row's number of values (-1 where the row is null), read once: `has` (the fusion)
        and monitoring's reference draw both ask, and each read decodes every vector of the file."""
        if self._row_lengths is None:
            self._row_lengths = np.concatenate([self._lengths(b) for b in self._batches()] or [np.zeros(0, dtype=np.int64)])
        return self._row_lengths

    def has(self, dim: int) -> np.ndarray:
        """Rows holding a vector of `dim` values (`has_vector` of the pandas column)."""
        return self.lengths() == dim if dim else np.zeros(self.rows, dtype=bool)

    def take(self, positions: np.ndarray, dim: int) -> np.ndarray:
        """(len(positions), dim) float32 vectors of those rows (in the order given; each row holds
        a vector of `dim` values), read in one pass over the file."""
        positions = np.asarray(positions, dtype=np.int64)
        order = np.argsort(positions, kind="stable")
        wanted = positions[order]
        out = np.zeros((len(positions), dim), dtype=np.float32)
        offset = 0
        for values in self._batches():
            lo, hi = np.searchsorted(wanted, [offset, offset + len(values)])
            if hi > lo:
                import pyarrow as pa

                part = values.take(pa.array(wanted[lo:hi] - offset)).flatten()
                out[order[lo:hi]] = part.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
            offset += len(values)
            if hi == len(wanted):
                break
        return out

    def ranges(self, bounds: list[tuple[int, int]], dim: int):
        """For each [start, stop) of `bounds` (consecutive, in order): the rows' float32 vectors
        (zeros where a row has none), reading the file once."""
        import pyarrow as pa

        batches = self._batches()
        pending, first = [], 0  # buffered arrays, and the row the first of them starts at
        buffered = 0
        for start, stop in bounds:
            while first + buffered < stop:
                values = next(batches)
                pending.append(values)
                buffered += len(values)
            values = pa.concat_arrays(pending) if len(pending) > 1 else pending[0]
            piece = values.slice(start - first, stop - start)
            yield self._dense(piece, self._lengths(piece) == dim, dim)
            pending, buffered, first = [values.slice(stop - first)], first + buffered - stop, stop


@dataclass
class _Completion:
    """The whole-frame, narrow part of completing missing blocks (see `Fusion._prepare`)."""

    z: np.ndarray  # (n, features) float64 standardised behaviour, NaN where still missing
    has: np.ndarray  # (n,) the row holds a text vector
    lend_rows: np.ndarray  # rows without text that get their neighbours' mean text direction
    lend_ids: np.ndarray  # (len(lend_rows), neighbours) reference rows of each


@dataclass
class Fusion:
    feature_columns: list[str]
    behaviour_weight: float = 1.0
    text_weight: float = 1.0
    pca_components: int = 24
    neighbours: int = 10
    medians: np.ndarray = field(default_factory=lambda: np.zeros(0))
    means: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    text_dim: int = 0
    text_fill: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ref_z: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    ref_text: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    pca_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pca_matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    block_rows: int = BLOCK_ROWS  # persons represented at a time (not saved: any size gives the same values)

    def _behaviour(self, frame: pd.DataFrame) -> np.ndarray:
        cols = [frame[c].astype(float).to_numpy() if c in frame.columns else np.full(len(frame), np.nan) for c in self.feature_columns]
        return np.column_stack(cols) if cols else np.zeros((len(frame), 0))

    def _z(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(standardised behaviour with NaN, sparse-behaviour mask) of every row, a block at a time."""
        z = np.empty((len(frame), len(self.feature_columns)))
        for start, stop in row_blocks(len(frame), self.block_rows):
            x = self._behaviour(frame.iloc[start:stop])
            z[start:stop] = np.clip((x - self.means) / self.stds, -CLIP_Z, CLIP_Z) if x.size else x
        sparse = np.isnan(z).mean(axis=1) > SPARSE_ROW if z.shape[1] else np.ones(len(frame), bool)
        return z, sparse

    def _prepare(self, frame: pd.DataFrame, z: np.ndarray | None = None, sparse: np.ndarray | None = None, texts: ParquetVectors | None = None) -> _Completion:
        """What completing a row needs beyond the row itself, for every row at once (all narrow):
        behaviour borrowed from the text neighbours of people with text and little behaviour, and
        the text neighbours of people with behaviour and no text (the neighbour searches run on
        every such person at once, as one search each, whatever the block size). `texts`: the
        rows' text vectors read from a file (else the frame's `text_embedding` column)."""
        if z is None or sparse is None:
            z, sparse = self._z(frame)
        column = frame.get("text_embedding")
        has = texts.has(self.text_dim) if texts is not None else has_vector(column, len(frame), self.text_dim)
        lend_rows, lend_ids = np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.int64)
        if len(self.ref_z) and self.text_dim:
            median_z = (self.medians - self.means) / self.stds
            borrow = np.flatnonzero(sparse & has)
            if len(borrow):
                t = texts.take(borrow, self.text_dim) if texts is not None else embedding_matrix(column.iloc[borrow], len(borrow), self.text_dim)[0]
                guess = _knn_mean(t, self.ref_text, self.ref_z, self.neighbours, "ip")
                z[borrow] = np.where(np.isnan(z[borrow]), guess, z[borrow])
            lend_rows = np.flatnonzero(~has & ~sparse)
            if len(lend_rows):
                filled = np.where(np.isnan(z[lend_rows]), median_z, z[lend_rows])
                lend_ids = _knn_ids(filled, self.ref_z, self.neighbours, "l2")
        return _Completion(z, has, lend_rows, lend_ids)

    def _complete_block(self, frame: pd.DataFrame, prep: _Completion, start: int, stop: int, t: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(behaviour, text) of rows start:stop with every missing value filled; `t`: the rows'
        text vectors when they come from a file (`ParquetVectors.ranges`)."""
        median_z = (self.medians - self.means) / self.stds
        z = prep.z[start:stop]
        if t is None and self.text_dim:
            t, _ = embedding_matrix(frame["text_embedding"].iloc[start:stop] if "text_embedding" in frame.columns else None, stop - start, self.text_dim)
        elif t is None:
            t = np.zeros((stop - start, 0), dtype=np.float32)
        has = prep.has[start:stop].copy()
        lo, hi = np.searchsorted(prep.lend_rows, [start, stop])
        if hi > lo:
            rows = prep.lend_rows[lo:hi] - start
            guess = self.ref_text[prep.lend_ids[lo:hi]].mean(axis=1)
            t[rows] = guess / np.maximum(np.linalg.norm(guess, axis=1, keepdims=True), 1e-12)
            has[rows] = True
        z = np.where(np.isnan(z), median_z, z) if z.size else z
        if self.text_dim:
            t[~has] = self.text_fill
        return z, t

    def column_weights(self) -> np.ndarray:
        """Per-column weights: the indicator columns of one categorical attribute (`attr__value`)
        share the weight of one column, so an attribute with many values does not dominate."""
        groups = pd.Series([c.split("__", 1)[0] if "__" in c else c for c in self.feature_columns])
        sizes = groups.map(groups.value_counts()).to_numpy(dtype=float)
        return 1.0 / np.sqrt(sizes)

    def _raw_blocks(self, frame: pd.DataFrame, prep: _Completion, texts: ParquetVectors | None = None):
        """(start, stop, the rows' weighted float64 [behaviour | text] matrix), a block at a time."""
        weights = self.column_weights()
        factor = self.behaviour_weight / np.sqrt(max(float((weights**2).sum()), 1.0))
        blocks = row_blocks(len(frame), self.block_rows)
        stored = texts.ranges(blocks, self.text_dim) if texts is not None and self.text_dim else None
        for start, stop in blocks:
            z, t = self._complete_block(frame, prep, start, stop, next(stored) if stored is not None else None)
            z = z * weights * factor
            # hstack of the float64 behaviour block and the text block is float64 already: no second copy
            yield start, stop, (np.hstack([z, t * self.text_weight]).astype(np.float64, copy=False) if self.text_dim else z.astype(np.float64))

    def fit(self, frame: pd.DataFrame, text_dim: int, seed: int = 0) -> "Fusion":
        self._fit(frame, text_dim, seed)
        return self

    def fit_transform(self, frame: pd.DataFrame, text_dim: int, seed: int = 0) -> np.ndarray:
        """`fit(frame)` then `transform(frame)`, completing the frame's missing blocks once."""
        return self._project(frame, self._fit(frame, text_dim, seed))

    def _fit(self, frame: pd.DataFrame, text_dim: int, seed: int) -> _Completion:
        x = self._behaviour(frame)
        self.medians = np.nan_to_num(np.nanmedian(x, axis=0)) if x.size else np.zeros(0)
        filled = np.where(np.isnan(x), self.medians, x)
        self.means = filled.mean(axis=0)
        self.stds = np.maximum(filled.std(axis=0), 1e-6)
        del x, filled
        self.text_dim = text_dim
        z, sparse = self._z(frame)
        if text_dim:
            column = frame.get("text_embedding")
            # the mean text vector, summed row after row in float32 as `t[has].mean(axis=0)` sums it
            total, count = None, 0
            for start, stop in row_blocks(len(frame), self.block_rows):
                t, has = embedding_matrix(column.iloc[start:stop] if column is not None else None, stop - start, text_dim)
                t = t[has]
                if not len(t):
                    continue
                if total is not None:
                    t[0] += total  # (total + r0) + r1 + ...: the whole frame's order of additions
                total = np.add.reduce(t, axis=0)
                count += len(t)
            mean = total / np.float32(count) if count else np.zeros(text_dim, dtype=np.float32)
            self.text_fill = (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)
            both = np.flatnonzero(~sparse & has_vector(column, len(frame), text_dim))
            if len(both):
                pick = np.random.default_rng(seed).choice(both, size=min(REFERENCE_SIZE, len(both)), replace=False)
                median_z = (self.medians - self.means) / self.stds
                self.ref_z = np.where(np.isnan(z[pick]), median_z, z[pick]).astype(np.float32)
                self.ref_text = embedding_matrix(column.iloc[pick], len(pick), text_dim)[0].astype(np.float32)
        prep = self._prepare(frame, z, sparse)
        # PCA from the covariance summed over blocks of persons (float64; each block shifted by
        # the first block's mean, so the sums stay small) and its eigenvectors: the principal
        # directions an SVD of the whole centred matrix gives, without that matrix.
        n, total, shift, shifted_sum, cross = len(frame), None, None, None, None
        for _, _, raw in self._raw_blocks(frame, prep):
            if shift is None:
                shift = raw.mean(axis=0)
                shifted_sum, cross = np.zeros_like(shift), np.zeros((len(shift), len(shift)))
            first = raw[0].copy()
            if total is not None:
                raw[0] += total  # the mean summed row after row, as `raw.mean(axis=0)` sums it
            total = np.add.reduce(raw, axis=0)
            raw[0] = first
            raw -= shift
            shifted_sum += raw.sum(axis=0)
            cross += raw.T @ raw
        self.pca_mean = total / n
        n_comp = int(min(self.pca_components, len(shift), max(n - 1, 1)))
        offset = shifted_sum / n
        covariance = cross - n * np.outer(offset, offset)
        values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
        components = vectors[:, ::-1][:, :n_comp]
        # a fixed sign per direction (an eigenvector's sign is arbitrary): its largest loading positive
        signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(n_comp)])
        self.pca_matrix = np.ascontiguousarray(components * np.where(signs == 0, 1.0, signs))
        return prep

    def transform(self, frame: pd.DataFrame, texts: ParquetVectors | None = None) -> np.ndarray:
        """(n, pca_components) float32 representation of each row of `frame`; `texts`: the rows'
        text vectors in a file (a frame without its `text_embedding` column; the same values)."""
        if texts is not None and len(texts) != len(frame):
            raise ValueError(f"{len(texts)} text rows for {len(frame)} rows")
        return self._project(frame, self._prepare(frame, texts=texts), texts)

    def _project(self, frame: pd.DataFrame, prep: _Completion, texts: ParquetVectors | None = None) -> np.ndarray:
        out = np.empty((len(frame), self.pca_matrix.shape[1]), dtype=np.float32)
        for start, stop, raw in self._raw_blocks(frame, prep, texts):
            raw -= self.pca_mean  # in place: the same values as raw - pca_mean without a second matrix
            out[start:stop] = raw @ self.pca_matrix
        return out

    ARRAYS = ("medians", "means", "stds", "text_fill", "ref_z", "ref_text", "pca_mean", "pca_matrix")

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.ARRAYS}

    def params(self) -> dict:
        return {
            "feature_columns": self.feature_columns,
            "behaviour_weight": self.behaviour_weight,
            "text_weight": self.text_weight,
            "pca_components": self.pca_components,
            "neighbours": self.neighbours,
            "text_dim": self.text_dim,
        }

    @classmethod
    def restore(cls, params: dict, arrays: dict[str, np.ndarray]) -> "Fusion":
        fusion = cls(**{k: params[k] for k in ("feature_columns", "behaviour_weight", "text_weight", "pca_components", "neighbours")})
        fusion.text_dim = int(params["text_dim"])
        for key in cls.ARRAYS:
            setattr(fusion, key, arrays[key])
        return fusion
