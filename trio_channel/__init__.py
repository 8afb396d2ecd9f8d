"""trio_channel: a trio-native WebSocket channel between AI agents and people.

Embed it with :func:`serve` (or :func:`open_bus` and :class:`Channel`), keep
each chat's turns in order with :func:`run_turns` / :class:`ChatTurns`; see
``docs/embedding.md``. The client library is :mod:`trio_channel.client`.
"""

from .agents.turns import ChatTurns as ChatTurns
from .agents.turns import TurnFunction as TurnFunction
from .agents.turns import run_turns as run_turns
from .app import AgentFunction as AgentFunction
from .app import serve as serve
from .bus import AgentBusEnds as AgentBusEnds
from .bus import ServerBusEnds as ServerBusEnds
from .bus import open_bus as open_bus
from .config import ChannelConfig as ChannelConfig
from .config import ConfigError as ConfigError
from .config import ConfigErrors as ConfigErrors
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
from .logs import setup_logging as setup_logging
from .server import Channel as Channel

__version__ = "0.1.0"
