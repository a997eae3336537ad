"""Turn what inference libraries return into calmon's record fields: ``client.log_prediction(model,
id, **from_openai(response))``. No adapter imports the library it reads: each reads the shape."""

from calmon_client.adapters.fields import ScoreFields
from calmon_client.adapters.huggingface import from_generate, from_transition_scores
from calmon_client.adapters.openai import from_openai, from_openai_stream
from calmon_client.adapters.sklearn import from_predict_proba

__all__ = [
    "ScoreFields",
    "from_generate",
    "from_openai",
    "from_openai_stream",
    "from_predict_proba",
    "from_transition_scores",
]
