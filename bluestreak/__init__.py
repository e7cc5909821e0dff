"""bluestreak: durable execution for Python asyncio services, on MongoDB.

>>> from bluestreak import Bluestreak, WorkflowContext
>>> engine = Bluestreak()  # in memory; Bluestreak("mongodb://...", "shop") for MongoDB
"""

from .clock import Clock, SystemClock
from .context import WorkflowContext
from .durations import Duration, parse_duration
from .engine import Bluestreak, StartResult
from .errors import (
    BluestreakError,
    ChildWorkflowFailed,
    DocumentTooLarge,
    DuplicateWorkflow,
    EventNotSet,
    EventTimeoutError,
    HandlerNotFound,
    InvalidArgument,
    InvalidDuration,
    InvalidTransition,
    NondeterminismError,
    NonRetryableError,
    ScheduleNotFound,
    StepError,
    StepIdReused,
    StepRetriesExceededError,
    StepTimeoutError,
    TransactionsUnsupported,
    UnencodableValue,
    WaitTimeout,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowUsageError,
)
from .handlers import Workflow
from .handles import WorkflowHandle
from .inspection import ChildNode, WorkflowPage
from .metrics import Metrics
from .queues import Queue, RateLimit
from .records import (
    AttemptRecord,
    ErrorInfo,
    EventRecord,
    NapRecord,
    QueueStats,
    ScheduleRecord,
    Stats,
    Status,
    StepRecord,
    WorkflowRecord,
)
from .retry import RetryPolicy
from .schedules import Schedule

__version__ = "0.1.0"

__all__ = [
    "AttemptRecord",
    "Bluestreak",
    "BluestreakError",
    "Clock",
    "DocumentTooLarge",
    "ChildWorkflowFailed",
    "ChildNode",
    "DuplicateWorkflow",
    "EventNotSet",
    "Duration",
    "ErrorInfo",
    "EventRecord",
    "EventTimeoutError",
    "HandlerNotFound",
    "InvalidArgument",
    "InvalidDuration",
    "InvalidTransition",
    "Metrics",
    "NapRecord",
    "NondeterminismError",
    "NonRetryableError",
    "Queue",
    "QueueStats",
    "RateLimit",
    "RetryPolicy",
    "Schedule",
    "ScheduleNotFound",
    "ScheduleRecord",
    "StartResult",
    "Stats",
    "Status",
    "StepError",
    "StepIdReused",
    "StepRecord",
    "StepRetriesExceededError",
    "StepTimeoutError",
    "SystemClock",
    "TransactionsUnsupported",
    "UnencodableValue",
    "WaitTimeout",
    "Workflow",
    "WorkflowContext",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowNotFound",
    "WorkflowPage",
    "WorkflowRecord",
    "WorkflowUsageError",
    "parse_duration",
]
