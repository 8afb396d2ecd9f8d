"""The Lua scripts of the Redis store: each a whole write, atomic in Redis.

Every script touches keys of one partition only (one hash tag), so it runs
on standalone Redis, Sentinel and Cluster alike. Per chat (keys from
:class:`~.redis_layout.ChatKeys`):

- ``meta`` HASH: ``epoch``, ``seq`` (the top seq), ``first``, ``created``,
  ``updated``, ``scope`` and ``goal`` (JSON), ``title``, ``preview``,
  ``run`` (Unix seconds while a turn runs);
- ``log`` STREAM, entry id ``<seq>-0``, fields ``e`` (the event as clients
  get it) and ``i`` (its event id); exactly ``history_limit`` entries kept;
- ``eids`` HASH event id -> seq, for idempotent appends (pruned with the
  log);
- ``users`` STREAM, entry id ``<after_seq>-*``, the user's messages;
- ``recent`` LIST, the ids of the last 32 user messages, newest first: a
  retried batch's message is found with ``LPOS`` on it (a scan of the
  ``users`` entries instead cost about 100 µs of Redis per message, more
  than the rest of a turn's writes together; ``benchmarks/two_nodes.py``).

A chat with no ``epoch`` in its meta has no log (never written, deleted or
expired): the next write starts one with a new epoch and drops whatever is
left of an old one. Every write slides the chat's idle TTL.
"""

from __future__ import annotations

from typing import Final

#: Create the chat's meta with a new epoch when it has none. Needs KEYS[1]
#: meta, KEYS[2] log, KEYS[3] eids, KEYS[4] users, KEYS[5] recent (every
#: script that writes a chat gets these five first); ``epoch_arg`` and
#: ``at_arg`` name ARGV slots.
_ENSURE_EPOCH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[{epoch_arg}]
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'first', 1,
             'created', ARGV[{at_arg}], 'updated', ARGV[{at_arg}])
end
"""

_SLIDE_TTL = """
for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ARGV[{ttl_arg}]) end
"""

#: KEYS: meta log eids users recent fan sessions fence inbox started
#: ARGV: 1 chat, 2 event id, 3 payload without seq, 4 at, 5 node, 6 fence
#: token ('' for none), 7 ttl ms, 8 history limit, 9 fan maxlen, 10 new
#: epoch, 11 preview text ('' for none), 12 the agents' group, 13 the inbox
#: entry this event ends the turn of ('' for none: acknowledged with it, so
#: a turn's end and the acknowledgement of its message are one write)
#: -> {seq, epoch, payload}; an error ``FENCED`` for a stale token.
APPEND_EVENT: Final = (
    """
local known = redis.call('HGET', KEYS[3], ARGV[2])
if known then
  local entry = redis.call('XRANGE', KEYS[2], known .. '-0', known .. '-0')
  local payload = ''
  if entry[1] then payload = entry[1][2][2] end
  return {tonumber(known), redis.call('HGET', KEYS[1], 'epoch') or '', payload}
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[8]) ~= ARGV[6] then
  return redis.error_reply('FENCED a newer owner holds this partition')
end
"""
    + _ENSURE_EPOCH.format(epoch_arg=10, at_arg=4)
    + """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local payload = string.sub(ARGV[3], 1, -2) .. ',"seq":' .. seq .. '}'
local limit = tonumber(ARGV[8])
if seq > limit then
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if oldest[1] then redis.call('HDEL', KEYS[3], oldest[1][2][4]) end
  local first = seq - limit + 1
  redis.call('HSET', KEYS[1], 'first', first)
  redis.call('XTRIM', KEYS[4], 'MINID', (first - 1) .. '-0')
end
redis.call('XADD', KEYS[2], 'MAXLEN', limit, seq .. '-0', 'e', payload, 'i', ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], seq)
redis.call('HSET', KEYS[1], 'updated', ARGV[4])
if ARGV[11] ~= '' then redis.call('HSETNX', KEYS[1], 'preview', ARGV[11]) end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[9], '*',
           'c', ARGV[1], 's', seq, 'ep', epoch, 'n', ARGV[5], 'e', payload)
redis.call('ZADD', KEYS[7], ARGV[4], ARGV[1])
if ARGV[13] ~= '' then
  redis.call('XACK', KEYS[9], ARGV[12], ARGV[13])
  redis.call('XDEL', KEYS[9], ARGV[13])
  redis.call('HDEL', KEYS[10], ARGV[13])
end
"""
    + _SLIDE_TTL.format(ttl_arg=7)
    + """
return {seq, epoch, payload}
"""
)

#: KEYS: meta log eids users recent sessions inbox fan
#: ARGV: 1 chat, 2 message id, 3 at, 4 client id, 5 content, 6 media (JSON),
#: 7 turn id ('' for none), 8 ttl ms, 9 new epoch, 10 title ('' none),
#: 11 the message for the agents (encoded; '' for none), 12 its
#: ``user_message`` for the other nodes' subscribers ('' for none), 13 node,
#: 14 fan maxlen. The echo goes on the fan-out before the message enters the
#: inbox, whose entry names it (``f``): the owner's agent answers only once
#: its node's feed has delivered it (cluster/inbox.py).
#: -> {after_seq, epoch}. A retried id (among the last 32) is stored once;
#: only a retry pays for reading the entries back, to answer where it went.
APPEND_USER_MESSAGE: Final = (
    """
if redis.call('LPOS', KEYS[5], ARGV[2]) then
  local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
  local recent = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 32)
  for _, entry in ipairs(recent) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'id' and fields[i + 1] == ARGV[2] then
        return {tonumber(string.match(entry[1], '^(%d+)-')), epoch}
      end
    end
  end
  -- Stored, then trimmed with the log's oldest events: it stays stored once.
  return {tonumber(redis.call('HGET', KEYS[1], 'seq') or '0'), epoch}
end
"""
    + _ENSURE_EPOCH.format(epoch_arg=9, at_arg=3)
    + """
local after = tonumber(redis.call('HGET', KEYS[1], 'seq'))
redis.call('XADD', KEYS[4], after .. '-*', 'id', ARGV[2], 'c', ARGV[4],
           'm', ARGV[5], 't', ARGV[3], 'media', ARGV[6], 'turn', ARGV[7])
redis.call('LPUSH', KEYS[5], ARGV[2])
redis.call('LTRIM', KEYS[5], 0, 31)
redis.call('HSET', KEYS[1], 'updated', ARGV[3])
if ARGV[10] ~= '' then
  redis.call('HSETNX', KEYS[1], 'title', ARGV[10])
  redis.call('HSETNX', KEYS[1], 'preview', ARGV[10])
end
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
local echo = ''
if ARGV[12] ~= '' then
  echo = redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[14], '*', 'c', ARGV[1],
                    's', '', 'k', 'user_message', 'n', ARGV[13], 'e', ARGV[12])
end
if ARGV[11] ~= '' then
  redis.call('XADD', KEYS[7], '*', 'm', ARGV[11], 'f', echo, 'n', ARGV[13])
end
"""
    + _SLIDE_TTL.format(ttl_arg=8)
    + """
return {after, epoch}
"""
)

#: KEYS: meta log eids users recent sessions
#: ARGV: 1 chat, 2 at, 3 ttl ms, 4 new epoch, then field/value pairs to set
#: (a value of '' deletes the field) -> the meta as a flat list.
UPDATE_CHAT: Final = (
    _ENSURE_EPOCH.format(epoch_arg=4, at_arg=2)
    + """
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
"""
    + _SLIDE_TTL.format(ttl_arg=3)
    + """
return redis.call('HGETALL', KEYS[1])
"""
)

#: KEYS: meta log eids users recent sessions fan
#: ARGV: 1 chat, 2 node, 3 fan maxlen -> 1 when there was a chat to delete.
DELETE_CHAT: Final = """
local existed = redis.call('HEXISTS', KEYS[1], 'epoch')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[6], ARGV[1])
if existed == 1 then
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[3], '*',
             'c', ARGV[1], 's', '', 'k', 'deleted', 'n', ARGV[2], 'e', '')
end
return existed
"""

#: An event that is not in the log, for every node's subscribers.
#: KEYS: fan meta
#: ARGV: 1 chat, 2 node, 3 payload, 4 kind (the event tag), 5 fan maxlen,
#: 6 running: 'run' (7: started_at), 'idle', or ''
BROADCAST: Final = """
if ARGV[6] ~= '' and redis.call('HEXISTS', KEYS[2], 'epoch') == 1 then
  if ARGV[6] == 'run' then
    redis.call('HSET', KEYS[2], 'run', ARGV[7])
  else
    redis.call('HDEL', KEYS[2], 'run')
  end
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*',
           'c', ARGV[1], 's', '', 'k', ARGV[4], 'n', ARGV[2], 'e', ARGV[3])
return 1
"""

# --- partitions, leases and the agents' inboxes -------------------------------

#: KEYS: nodes  ARGV: 1 node, 2 ttl ms -> how many nodes are alive.
HEARTBEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

#: KEYS: lease fence  ARGV: 1 node, 2 ttl ms -> the fencing token, or nil.
ACQUIRE_LEASE: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
return false
"""

#: KEYS: lease fence  ARGV: 1 node, 2 ttl ms, 3 token -> 1 while still ours.
RENEW_LEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1]
   and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

#: KEYS: lease  ARGV: 1 node
RELEASE_LEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

#: The owner's agent got the entry's message (attempt ARGV[2]).
#: KEYS: started  ARGV: 1 entry id, 2 attempt
MARK_STARTED: Final = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

#: A turn is done: the inbound entry leaves the inbox for good.
#: KEYS: inbox started  ARGV: 1 group, 2 entry id
ACK_TURN: Final = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
"""

# --- reads -------------------------------------------------------------------

#: KEYS: meta log  ARGV: 1 the first entry id wanted (``<after + 1>-0``), 2 limit
#: -> {epoch or '', top seq, first seq, seq1, payload1, seq2, payload2, ...}
READ_EVENTS: Final = """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'first')
if not meta[1] then return {'', 0, 1} end
local out = {meta[1], tonumber(meta[2]), tonumber(meta[3])}
local rows = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
for _, entry in ipairs(rows) do
  out[#out + 1] = tonumber(string.match(entry[1], '^(%d+)-'))
  out[#out + 1] = entry[2][2]
end
return out
"""

#: KEYS: meta -> the meta as a flat list (empty: no chat).
CHAT_META: Final = """
return redis.call('HGETALL', KEYS[1])
"""

#: The newest chats of one partition, with their metas.
#: KEYS: sessions  ARGV: 1 limit, 2 the partition's key prefix ('tc:{p}:c:')
#: -> {chat1, {meta1...}, chat2, {meta2...}}; chats whose meta expired are
#: dropped from the index on the way.
PARTITION_CHATS: Final = """
local ids = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, chat in ipairs(ids) do
  local meta = redis.call('HGETALL', ARGV[2] .. chat .. ':meta')
  if #meta == 0 then
    redis.call('ZREM', KEYS[1], chat)
  else
    out[#out + 1] = chat
    out[#out + 1] = meta
  end
end
return out
"""

#: KEYS: users  ARGV: 1 since seq, 2 limit -> {id1, {fields...}, ...}
USER_MESSAGES: Final = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
local out = {}
for _, entry in ipairs(rows) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2]
end
return out
"""

#: KEYS: probe  ARGV: 1 node -> 1 (a small real write)
PROBE: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', 10000)
return 1
"""

#: KEYS: conf  ARGV: 1 partitions -> the partition count every node must use
CONFIGURE: Final = """
redis.call('HSETNX', KEYS[1], 'partitions', ARGV[1])
return tonumber(redis.call('HGET', KEYS[1], 'partitions'))
"""

#: KEYS: secret  ARGV: 1 a new secret -> the secret every node signs with
SHARED_SECRET: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

# --- tokens (one key each: any slot) -------------------------------------------

#: KEYS: token  ARGV: 1 ttl ms
PUT_TOKEN: Final = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
"""

#: KEYS: token -> 1 when it existed (it is gone now: single use)
TAKE_TOKEN: Final = """
return redis.call('DEL', KEYS[1])
"""

#: KEYS: token -> 1 when it exists (API tokens: valid until they expire)
HAS_TOKEN: Final = """
return redis.call('EXISTS', KEYS[1])
"""
