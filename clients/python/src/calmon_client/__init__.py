"""calmon's light client: log predictions and labels without waiting, calibrate inline.

    from calmon_client import Client
    calmon = Client("http://127.0.0.1:8000", token=...)
    calmon.log_prediction("qa-bot", request_id, token_logprobs=logprobs, segment="billing")
    calmon.log_feedback("qa-bot", request_id, correct=True)        # hours later, from anywhere

Depends on httpx and the standard library only.
"""

from calmon_client.aio import AsyncClient
from calmon_client.client import Client
from calmon_client.delivery import RetryPolicy
from calmon_client.results import Calibrated, ClientStats

__all__ = ["AsyncClient", "Calibrated", "Client", "ClientStats", "RetryPolicy"]
__version__ = "0.1.0"
