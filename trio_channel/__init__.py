"""trio_channel: a trio-native WebSocket channel between AI agents and people.

Embed it with :func:`open_bus` and :class:`Channel`; see ``docs/embedding.md``.
"""

from .bus import AgentBusEnds as AgentBusEnds
from .bus import InboundMessage as InboundMessage
from .bus import ServerBusEnds as ServerBusEnds
from .bus import open_bus as open_bus
from .config import ChannelConfig as ChannelConfig
from .config import ConfigError as ConfigError
from .config import build_config as build_config
from .events import AgentEvent as AgentEvent
from .events import Delta as Delta
from .events import FileEdit as FileEdit
from .events import GoalState as GoalState
from .events import GoalStatus as GoalStatus
from .events import MediaUrl as MediaUrl
from .events import Message as Message
from .events import ReasoningDelta as ReasoningDelta
from .events import ReasoningEnd as ReasoningEnd
from .events import RuntimeModelUpdated as RuntimeModelUpdated
from .events import SessionUpdated as SessionUpdated
from .events import StreamEnd as StreamEnd
from .events import TurnEnd as TurnEnd
from .scope import DefaultScopePolicy as DefaultScopePolicy
from .scope import ScopeAccepted as ScopeAccepted
from .scope import ScopePolicy as ScopePolicy
from .scope import ScopeRejected as ScopeRejected
from .server import Channel as Channel
from .session import Peer as Peer

__version__ = "0.1.0"
