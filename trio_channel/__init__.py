"""trio_channel: a trio-native WebSocket channel between AI agents and people.

Embed it with :func:`open_bus` and :class:`Channel`; see ``docs/embedding.md``.
"""

from .bus import AgentBusEnds as AgentBusEnds
from .bus import ServerBusEnds as ServerBusEnds
from .bus import open_bus as open_bus
from .config import ChannelConfig as ChannelConfig
from .config import ConfigError as ConfigError
from .config import build_config as build_config
from .core.events import AgentEvent as AgentEvent
from .core.events import Delta as Delta
from .core.events import FileEdit as FileEdit
from .core.events import GoalState as GoalState
from .core.events import GoalStatus as GoalStatus
from .core.events import InboundMessage as InboundMessage
from .core.events import MediaUrl as MediaUrl
from .core.events import Message as Message
from .core.events import ReasoningDelta as ReasoningDelta
from .core.events import ReasoningEnd as ReasoningEnd
from .core.events import RuntimeModelUpdated as RuntimeModelUpdated
from .core.events import SessionUpdated as SessionUpdated
from .core.events import StreamEnd as StreamEnd
from .core.events import TurnEnd as TurnEnd
from .core.scope import DefaultScopePolicy as DefaultScopePolicy
from .core.scope import ScopeAccepted as ScopeAccepted
from .core.scope import ScopePolicy as ScopePolicy
from .core.scope import ScopeRejected as ScopeRejected
from .core.session import Peer as Peer
from .server import Channel as Channel

__version__ = "0.1.0"
