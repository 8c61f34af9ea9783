"""The persona model: a person's feature row -> (persona_id, persona_name, confidence).

`PersonaScorer` is the plain-Python model (fusion + centroids + names); `PersonaModel` is its
MLflow pyfunc wrapper, loaded from the `state` artifact (state.json + arrays.npz, no pickles).
Input columns: the numeric model features listed in state.json (missing ones are imputed) and
optionally `text_embedding` (a list of floats). Output: persona_id (int), persona_name (str),
confidence (0-1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from models.clustering import Clustering, assign
from models.fusion import Fusion


@dataclass
class PersonaScorer:
    fusion: Fusion
    clustering: Clustering
    persona_names: list[str]

    def represent(self, frame: pd.DataFrame) -> np.ndarray:
        return self.fusion.transform(frame)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        ids, confidence = assign(self.represent(frame), self.clustering)
        return pd.DataFrame(
            {
                "persona_id": ids.astype("int64"),
                "persona_name": [self.persona_names[i] for i in ids],
                "confidence": confidence.round(6),
            },
            index=frame.index,
        )

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "fusion": self.fusion.params(),
            "temperature": self.clustering.temperature,
            "k_scores": {str(k): v for k, v in self.clustering.k_scores.items()},
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
            temperature=float(state["temperature"]),
            k_scores={int(k): v for k, v in state["k_scores"].items()},
        )
        return cls(fusion=Fusion.restore(state["fusion"], data), clustering=clustering, persona_names=state["persona_names"])


class PersonaModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: loads the scorer from the `state` artifact and predicts personas."""

    def load_context(self, context) -> None:
        self.scorer = PersonaScorer.load(Path(context.artifacts["state"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.scorer.predict(pd.DataFrame(model_input)).reset_index(drop=True)
