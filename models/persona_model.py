"""The persona model: a person's feature row -> (persona_id, persona_name, confidence).

`PersonaScorer` is the plain-Python model (fusion + centroids + names); `PersonaModel` is its
MLflow pyfunc wrapper, loaded from the `state` artifact (state.json + arrays.npz, no pickles).
Input columns: the numeric model features listed in state.json (missing ones are imputed) and
optionally `text_embedding` (a list of floats). Output: persona_id (int), persona_name (str),
confidence (0-1); persona_id -1 means unassigned (an outlier).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from models.clustering import UNASSIGNED, Clustering, assign
from models.fusion import Fusion


UNASSIGNED_NAME = "Unassigned (far from every persona)"


@dataclass
class PersonaScorer:
    fusion: Fusion
    clustering: Clustering
    persona_names: list[str]  # per centroid
    persona_ids: list[int] = field(default_factory=list)  # per centroid; stable across versions

    def __post_init__(self) -> None:
        if not self.persona_ids:
            self.persona_ids = list(range(self.clustering.k))

    def represent(self, frame: pd.DataFrame, texts=None) -> np.ndarray:
        """The fusion's representation; `texts`: the rows' text vectors in a file
        (`models.fusion.ParquetVectors`) when `frame` comes without its `text_embedding` column."""
        return self.fusion.transform(frame, texts)

    def centroid_labels(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(centroid index or UNASSIGNED, confidence) per row."""
        return assign(self.represent(frame), self.clustering)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        idx, confidence = self.centroid_labels(frame)
        return self.labelled(idx, confidence, frame.index)

    def labelled(self, idx: np.ndarray, confidence: np.ndarray, index: pd.Index) -> pd.DataFrame:
        """`predict`'s frame from the centroid indices and confidences `centroid_labels` gives."""
        ids = np.array(self.persona_ids + [UNASSIGNED], dtype=np.int64)
        names = np.array(self.persona_names + [UNASSIGNED_NAME], dtype=object)
        pick = np.where(idx == UNASSIGNED, len(self.persona_ids), idx)
        return pd.DataFrame({"persona_id": ids[pick], "persona_name": names[pick], "confidence": confidence.round(6)}, index=index)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "fusion": self.fusion.params(),
            "outlier_threshold": self.clustering.outlier_threshold,
            "k_scores": {str(k): v for k, v in self.clustering.k_scores.items()},
            "k_stability": {str(k): v for k, v in self.clustering.k_stability.items()},
            "persona_ids": [int(i) for i in self.persona_ids],
            "persona_names": self.persona_names,
        }
        (folder / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        np.savez(folder / "arrays.npz", centroids=self.clustering.centroids, **self.fusion.arrays())
        return folder

    @classmethod
    def load(cls, folder: Path) -> "PersonaScorer":
        state = json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))
        with np.load(Path(folder) / "arrays.npz") as arrays:
            data = {k: arrays[k] for k in arrays.files}
        clustering = Clustering(
            centroids=data.pop("centroids"),
            outlier_threshold=float(state["outlier_threshold"]),
            k_scores={int(k): v for k, v in state["k_scores"].items()},
            k_stability={int(k): v for k, v in state.get("k_stability", {}).items()},
        )
        return cls(fusion=Fusion.restore(state["fusion"], data), clustering=clustering, persona_names=state["persona_names"], persona_ids=state["persona_ids"])


class PersonaModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: loads the scorer from the `state` artifact and predicts personas."""

    def load_context(self, context) -> None:
        self.scorer = PersonaScorer.load(Path(context.artifacts["state"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.scorer.predict(pd.DataFrame(model_input)).reset_index(drop=True)
