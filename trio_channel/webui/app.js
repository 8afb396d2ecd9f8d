/*
 * trio_channel's bundled chat page. Plain JavaScript: no build step, no
 * dependencies, nothing loaded from elsewhere.
 *
 * Served at / (index.html), /app.js and /style.css.
 *
 * Contract (docs/protocol.md and docs/http-api.md in the trio_channel
 * repository): GET /api/bootstrap before every (re)connect (its
 * token opens ONE WebSocket and is an API token until it expires), the
 * WebSocket at ws_url?client_id=webui-…&token=…, GET /api/sessions for the
 * sidebar, GET /api/sessions/{key}/webui-thread for an opened chat's history.
 * Persisted events carry a per-chat `seq`; the page remembers the
 * highest one it has shown per chat, ignores anything at or below it, and
 * re-attaches with `since_seq` after a reconnect, so a reply interrupted by a
 * restart is completed and shown once.
 *
 * A server with a secret (token_issue_secret, or a static token) answers
 * bootstrap 401: the page then asks for it, keeps it in sessionStorage (this
 * tab only, never in the URL) and sends it as `Authorization: Bearer`.
 *
 * Safety: text from the agent (and the user) only ever reaches the page
 * through createElement/textContent; links must be http(s), images must be
 * same-origin /api/media/ URLs. innerHTML is never used.
 */
"use strict";

(function () {
  const MiB = 1024 * 1024;
  const MAX_IMAGES = 4;
  const IMAGE_MAX_BYTES = 8 * MiB;
  const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif"];
  /* The server's default max_message_bytes is 36 MiB; a bigger frame closes
   * the connection (1009), so refuse it here with a plain sentence. */
  const MAX_FRAME_CHARS = 36 * MiB - 64 * 1024;
  const BACKOFF_FIRST_MS = 250;
  const BACKOFF_CAP_MS = 5000;
  /* Failed attempts in a row after which the status says "offline". */
  const OFFLINE_AFTER = 4;
  /* Refresh the API token this long before the server would expire it. */
  const TOKEN_MARGIN_MS = 15000;
  const CHAT_ID_RE = /^[A-Za-z0-9_:-]{1,64}$/;
  const PERSISTED = new Set([
    "message",
    "delta",
    "stream_end",
    "reasoning_delta",
    "reasoning_end",
    "file_edit",
    "turn_end",
  ]);

  /* Attachment rejections, worded for people (server `reason` or ours). */
  const REJECTION = {
    too_many_images: "At most 4 images per message",
    too_many_videos: "At most 1 video per message",
    malformed: "That attachment could not be read",
    decode: "That attachment could not be decoded (is the file empty or damaged?)",
    mime: "That file type is not supported (SVG is not allowed)",
    size: "Too large: images up to 8 MiB, videos up to 20 MiB",
  };

  const CONN_LABEL = {
    connecting: "Connecting…",
    online: "Online",
    reconnecting: "Reconnecting…",
    offline: "Offline",
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    app: $("app"),
    sidebar: $("sidebar"),
    backdrop: $("backdrop"),
    menu: $("menu-toggle"),
    newChat: $("new-chat"),
    chatList: $("chat-list"),
    sessionsNote: $("sessions-note"),
    title: $("chat-title"),
    model: $("model-name"),
    run: $("run-status"),
    conn: $("conn-status"),
    banner: $("banner"),
    secretForm: $("secret-form"),
    secretInput: $("secret-input"),
    secretLabel: $("secret-label"),
    messages: $("messages"),
    composer: $("composer"),
    attachments: $("attachments"),
    composerError: $("composer-error"),
    fileInput: $("file-input"),
    input: $("input"),
    send: $("send"),
  };

  const state = {
    clientId: "webui-" + randomHex(12),
    ws: null,
    connecting: false,
    everOnline: false,
    failures: 0,
    reconnectTimer: 0,
    /* Chats this socket is subscribed to (ready's chat, attach, new_chat). */
    attached: new Set(),
    /* chat_id -> chat view (see chatView). */
    chats: new Map(),
    current: null,
    apiToken: "",
    apiTokenUntil: 0,
    /* The server's secret, when it needs one (also in sessionStorage). */
    secret: "",
    pendingNewChat: false,
    /* The last message sent, so an error answering it can mark it. */
    lastSent: null,
    attachments: [],
    sessions: [],
    sessionsBusy: false,
    sessionsAgain: false,
    sessionsTimer: 0,
    sending: false,
  };

  // --- small helpers -------------------------------------------------------

  function randomHex(n) {
    const bytes = new Uint8Array(Math.ceil(n / 2));
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0"))
      .join("")
      .slice(0, n);
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function formatDuration(ms) {
    if (!Number.isFinite(ms) || ms < 0) return "";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
  }

  function formatTime(value) {
    let ms = NaN;
    if (typeof value === "number") ms = value > 1e12 ? value : value * 1000;
    else if (typeof value === "string") ms = Date.parse(value);
    if (!Number.isFinite(ms)) return "";
    const when = new Date(ms);
    const now = new Date();
    if (when.toDateString() === now.toDateString()) {
      return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    return when.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  // --- safe rendering of agent text (a small markdown subset) ---------------

  /* http(s) links only; anything else stays plain text. */
  function safeLink(raw) {
    try {
      const url = new URL(raw);
      if (url.protocol === "http:" || url.protocol === "https:") return url.href;
    } catch (_) {
      /* not an absolute URL */
    }
    return null;
  }

  /* Images only from this server's signed media route. */
  function safeMediaUrl(raw) {
    if (typeof raw !== "string" || !raw) return null;
    try {
      const url = new URL(raw, window.location.origin);
      if (
        url.origin === window.location.origin &&
        url.pathname.startsWith("/api/media/") &&
        !url.username &&
        !url.password
      ) {
        return url.pathname + url.search;
      }
    } catch (_) {
      /* unparsable */
    }
    return null;
  }

  const VIDEO_EXT_RE = /\.(mp4|webm|mov)$/i;

  function mediaElement(src, name) {
    if (VIDEO_EXT_RE.test(name || "")) {
      const video = make("video", "media");
      video.controls = true;
      video.preload = "metadata";
      video.src = src;
      return video;
    }
    const img = make("img", "media");
    img.alt = name || "image";
    img.loading = "lazy";
    img.src = src;
    return img;
  }

  // One line at a time: `code`, ![alt](url), [text](url), **bold**, bare URLs.
  const INLINE_RE = new RegExp(
    [
      "(`+)(.+?)\\1(?!`)",
      '!\\[([^\\]\\n]*)\\]\\(\\s*<?([^\\s<>()]+)>?(?:\\s+"[^"\\n]*")?\\s*\\)',
      '\\[([^\\]\\n]+)\\]\\(\\s*<?([^\\s<>()]+)>?(?:\\s+"[^"\\n]*")?\\s*\\)',
      "\\*\\*(?=\\S)(.+?)\\*\\*",
      "(https?:\\/\\/[^\\s<>()\\[\\]\"']*[^\\s<>()\\[\\]\"'.,;:!?])",
    ].join("|"),
    "g"
  );

  function appendInline(parent, text) {
    INLINE_RE.lastIndex = 0;
    let last = 0;
    let m;
    while ((m = INLINE_RE.exec(text)) !== null) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      last = INLINE_RE.lastIndex;
      if (m[1] !== undefined) {
        parent.appendChild(make("code", null, m[2]));
      } else if (m[4] !== undefined) {
        const src = safeMediaUrl(m[4]);
        if (src) parent.appendChild(mediaElement(src, m[3] || m[4].split("/").pop()));
        else parent.appendChild(document.createTextNode(m[0]));
      } else if (m[6] !== undefined) {
        const href = safeLink(m[6]);
        if (href) parent.appendChild(link(href, m[5]));
        else parent.appendChild(document.createTextNode(m[0]));
      } else if (m[7] !== undefined) {
        parent.appendChild(make("strong", null, m[7]));
      } else if (m[8] !== undefined) {
        const href = safeLink(m[8]);
        if (href) parent.appendChild(link(href, m[8]));
        else parent.appendChild(document.createTextNode(m[0]));
      }
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function link(href, text) {
    const a = make("a", null, text);
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer nofollow";
    return a;
  }

  const FENCE_RE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;

  /* Paragraphs (single newlines kept as line breaks) and fenced code blocks.
   * An unterminated fence (a stream still arriving) runs to the end. */
  function renderMarkdown(source) {
    const frag = document.createDocumentFragment();
    const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
    let para = [];
    const flush = () => {
      if (!para.length) return;
      const p = make("p");
      para.forEach((line, i) => {
        if (i) p.appendChild(make("br"));
        appendInline(p, line);
      });
      frag.appendChild(p);
      para = [];
    };
    for (let i = 0; i < lines.length; i++) {
      const fence = FENCE_RE.exec(lines[i]);
      if (fence) {
        flush();
        const close = new RegExp("^ {0,3}" + (fence[1][0] === "`" ? "`" : "~") + "{" + fence[1].length + ",}\\s*$");
        const body = [];
        i++;
        while (i < lines.length && !close.test(lines[i])) {
          body.push(lines[i]);
          i++;
        }
        const pre = make("pre", "code-block");
        const code = make("code", null, body.join("\n"));
        if (fence[2]) {
          code.dataset.lang = fence[2];
          pre.dataset.lang = fence[2];
        }
        pre.appendChild(code);
        frag.appendChild(pre);
        continue;
      }
      if (lines[i].trim() === "") flush();
      else para.push(lines[i]);
    }
    flush();
    return frag;
  }

  // --- chats and their logs ---------------------------------------------------

  function chatView(id) {
    let chat = state.chats.get(id);
    if (!chat) {
      const log = make("div", "chat-log");
      log.dataset.chatId = id;
      log.hidden = true;
      el.messages.appendChild(log);
      chat = {
        id,
        log,
        lastSeq: 0,
        streams: new Map(),
        reasoning: new Map(),
        running: false,
        startedAt: null,
        historyState: "none", // none | loading | done
        title: "",
        hasContent: false,
      };
      state.chats.set(id, chat);
    }
    return chat;
  }

  function currentChat() {
    return state.current ? chatView(state.current) : null;
  }

  function nearBottom() {
    const box = el.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  function scrollToBottom() {
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  /* Run `change` on a chat's log, keeping the view pinned to the bottom when
   * it was there before. */
  function update(chat, change) {
    const visible = chat.id === state.current;
    const stick = visible && nearBottom();
    const result = change();
    chat.hasContent = true;
    if (stick) scrollToBottom();
    return result;
  }

  function bubble(chat, who, extraClass) {
    const row = make("div", "msg " + who + (extraClass ? " " + extraClass : ""));
    const body = make("div", "bubble");
    row.appendChild(body);
    chat.log.appendChild(row);
    return { row, body };
  }

  function notice(chat, text, kind) {
    if (!chat) return null;
    return update(chat, () => {
      const n = make("div", "notice " + (kind || "info"), text);
      n.setAttribute("role", kind === "error" ? "alert" : "status");
      chat.log.appendChild(n);
      return n;
    });
  }

  function streamKey(streamId) {
    return JSON.stringify(streamId === undefined ? null : streamId);
  }

  // Streaming bubbles re-render their markdown at most once per frame.
  const dirtyStreams = new Set();
  let renderQueued = false;

  function scheduleRender(stream) {
    dirtyStreams.add(stream);
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(flushRenders);
    setTimeout(flushRenders, 100); // rAF does not run in hidden tabs
  }

  function flushRenders() {
    if (!renderQueued) return;
    renderQueued = false;
    const stick = nearBottom();
    for (const stream of dirtyStreams) renderStream(stream);
    dirtyStreams.clear();
    if (stick) scrollToBottom();
  }

  function renderStream(stream) {
    dirtyStreams.delete(stream);
    stream.body.replaceChildren(renderMarkdown(stream.text));
  }

  function openStream(chat, streamId) {
    const key = streamKey(streamId);
    let stream = chat.streams.get(key);
    if (!stream) {
      const b = bubble(chat, "agent", "streaming");
      stream = { row: b.row, body: b.body, text: "" };
      chat.streams.set(key, stream);
    }
    return stream;
  }

  function endStream(chat, streamId, text) {
    const key = streamKey(streamId);
    let stream = chat.streams.get(key);
    if (!stream) {
      if (typeof text !== "string") return;
      stream = openStream(chat, streamId);
    }
    chat.streams.delete(key);
    if (typeof text === "string") stream.text = text;
    renderStream(stream);
    stream.row.classList.remove("streaming");
  }

  function openReasoning(chat, streamId) {
    const key = streamKey(streamId);
    let block = chat.reasoning.get(key);
    if (!block) {
      const details = make("details", "reasoning");
      details.open = true;
      const summary = make("summary", null, "Thinking…");
      const body = make("div", "reasoning-text");
      details.append(summary, body);
      chat.log.appendChild(details);
      block = { details, summary, body };
      chat.reasoning.set(key, block);
    }
    return block;
  }

  function endReasoning(chat, streamId) {
    const key = streamKey(streamId);
    const block = chat.reasoning.get(key);
    if (!block) return;
    chat.reasoning.delete(key);
    block.summary.textContent = "Reasoning";
    block.details.open = false;
  }

  /* The turn is over: whatever is still "live" in this chat stops looking so. */
  function settle(chat) {
    for (const stream of chat.streams.values()) {
      renderStream(stream);
      stream.row.classList.remove("streaming");
    }
    for (const key of Array.from(chat.reasoning.keys())) {
      const block = chat.reasoning.get(key);
      block.summary.textContent = "Reasoning";
      block.details.open = false;
    }
  }

  function renderAgentMessage(chat, ev) {
    const extra = ev.kind === "tool_hint" || ev.kind === "progress" ? ev.kind.replace("_", "-") : "";
    const b = bubble(chat, "agent", extra);
    if (typeof ev.text === "string" && ev.text) b.body.appendChild(renderMarkdown(ev.text));
    if (Array.isArray(ev.media_urls) && ev.media_urls.length) {
      const gallery = make("div", "gallery");
      for (const item of ev.media_urls) {
        const src = safeMediaUrl(item && item.url);
        if (src) gallery.appendChild(mediaElement(src, item.name));
      }
      if (gallery.childNodes.length) b.body.appendChild(gallery);
    }
  }

  function renderFileEdit(chat, ev) {
    const edits = Array.isArray(ev.edits) ? ev.edits : [];
    const names = edits
      .map((e) => (e && (e.path || e.file || e.name)) || "")
      .filter((n) => typeof n === "string" && n);
    const text =
      "Edited " + edits.length + (edits.length === 1 ? " file" : " files") +
      (names.length ? ": " + names.slice(0, 5).join(", ") + (names.length > 5 ? ", …" : "") : "");
    chat.log.appendChild(make("div", "meta file-edit", text));
  }

  function renderUserMessage(chat, text, images, note) {
    return update(chat, () => {
      const b = bubble(chat, "user");
      if (text) b.body.appendChild(make("div", "user-text", text));
      if (images && images.length) {
        const gallery = make("div", "gallery");
        for (const src of images) {
          const img = make("img", "media");
          img.alt = "attachment";
          img.addEventListener("error", () => img.replaceWith(make("span", "meta", "(image cannot be shown)")), { once: true });
          img.src = src;
          gallery.appendChild(img);
        }
        b.body.appendChild(gallery);
      }
      if (note) b.body.appendChild(make("div", "meta", note));
      return b;
    });
  }

  // --- events from the server -------------------------------------------------

  function onFrame(data) {
    if (typeof data !== "string") return;
    let ev;
    try {
      ev = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (!ev || typeof ev !== "object") return;
    switch (ev.event) {
      case "ready":
        onReady(ev);
        return;
      case "attached":
        onAttached(ev);
        return;
      case "error":
        onError(ev);
        return;
      case "runtime_model_updated":
        setModel(ev.model_name);
        return;
      default:
        break;
    }
    if (typeof ev.chat_id !== "string" || !CHAT_ID_RE.test(ev.chat_id)) return;
    applyEvent(chatView(ev.chat_id), ev);
  }

  /* Apply one chat event; persisted ones at or below the chat's last seq were
   * already shown (replay after a reconnect) and are dropped. */
  function applyEvent(chat, ev) {
    if (PERSISTED.has(ev.event) && Number.isInteger(ev.seq) && ev.seq > 0) {
      if (ev.seq <= chat.lastSeq) return;
      chat.lastSeq = ev.seq;
    }
    switch (ev.event) {
      case "delta":
        if (typeof ev.text !== "string") return;
        update(chat, () => {
          const stream = openStream(chat, ev.stream_id);
          stream.text += ev.text;
          scheduleRender(stream);
        });
        return;
      case "stream_end":
        update(chat, () => endStream(chat, ev.stream_id, ev.text));
        return;
      case "reasoning_delta":
        if (typeof ev.text !== "string") return;
        update(chat, () => openReasoning(chat, ev.stream_id).body.append(ev.text));
        return;
      case "reasoning_end":
        endReasoning(chat, ev.stream_id);
        return;
      case "message":
        update(chat, () => renderAgentMessage(chat, ev));
        return;
      case "file_edit":
        update(chat, () => renderFileEdit(chat, ev));
        return;
      case "turn_end":
        update(chat, () => {
          settle(chat);
          const took = formatDuration(ev.latency_ms);
          chat.log.appendChild(make("div", "meta turn-end", took ? "Replied in " + took : "Done"));
        });
        if (state.lastSent && state.lastSent.chat === chat.id) state.lastSent = null;
        refreshSessionsSoon();
        return;
      case "goal_status":
        if (ev.status === "running") {
          setRunning(chat, true, typeof ev.started_at === "number" ? ev.started_at : null);
          if (state.lastSent && state.lastSent.chat === chat.id) state.lastSent = null;
        } else if (ev.status === "idle") {
          setRunning(chat, false, null);
          settle(chat);
        }
        return;
      case "goal_state":
        chat.goalState = ev.goal_state;
        return;
      default:
        return; // session_updated and anything new: nothing to show
    }
  }

  function onReady(ev) {
    state.failures = 0;
    state.everOnline = true;
    setConn("online");
    hideBanner();
    state.attached = new Set();
    if (typeof ev.chat_id === "string") state.attached.add(ev.chat_id);
    // A new connection knows nothing yet about running turns; hydration
    // after each attach says which are still running.
    for (const chat of state.chats.values()) setRunning(chat, false, null);
    if (state.current === null) {
      const wanted = chatFromHash();
      if (wanted && wanted !== ev.chat_id) {
        openChat(wanted);
      } else {
        chatView(ev.chat_id).historyState = "done"; // minted just now: empty
        openChat(ev.chat_id);
      }
    } else {
      attach(currentChat());
    }
    refreshSessions();
  }

  function onAttached(ev) {
    if (typeof ev.chat_id !== "string" || !CHAT_ID_RE.test(ev.chat_id)) return;
    state.attached.add(ev.chat_id);
    if (state.pendingNewChat && !state.chats.has(ev.chat_id)) {
      state.pendingNewChat = false;
      chatView(ev.chat_id).historyState = "done";
      openChat(ev.chat_id);
    }
  }

  function errorText(ev) {
    const detail = String(ev.detail || "");
    const reason = typeof ev.reason === "string" ? ev.reason : "";
    switch (detail) {
      case "image_rejected":
        return REJECTION[reason] || "The attachment was rejected" + (reason ? " (" + reason + ")" : "");
      case "rate_limited":
        return "You are sending too fast; the server dropped that request. Wait a moment and try again.";
      case "workspace_scope_rejected":
        return "The workspace setting was refused" + (reason ? ": " + reason : "");
      case "missing content":
        return "Type a message or attach an image first.";
      case "invalid chat_id":
        return "That chat id is not valid.";
      case "history_truncated":
        return "Older messages of this chat are no longer kept" +
          (Number.isInteger(ev.first_seq) ? "; showing from message #" + ev.first_seq + " on." : ".");
      default:
        if (detail.startsWith("unknown type")) return "The server did not understand a request (" + detail + ").";
        return "Error: " + (detail || "unknown") + (reason ? " (" + reason + ")" : "");
    }
  }

  function onError(ev) {
    const text = errorText(ev);
    const byChat = typeof ev.chat_id === "string" && CHAT_ID_RE.test(ev.chat_id) ? chatView(ev.chat_id) : null;
    if (ev.detail === "history_truncated") {
      notice(byChat || currentChat(), text, "info");
      return;
    }
    const sent = state.lastSent;
    let target = byChat || currentChat();
    if (sent && (!byChat || byChat.id === sent.chat)) {
      state.lastSent = null;
      sent.bubble.row.classList.add("failed");
      sent.bubble.body.appendChild(make("div", "meta", "Not sent"));
      target = chatView(sent.chat);
    }
    notice(target, text, "error");
  }

  function setRunning(chat, running, startedAt) {
    chat.running = running;
    chat.startedAt = running ? startedAt : null;
    if (!running) chat.runSince = null;
    else if (!chat.runSince) chat.runSince = Date.now();
    if (chat.id === state.current) renderRunStatus();
    const item = el.chatList.querySelector('[data-chat-id="' + chat.id + '"]');
    if (item) item.classList.toggle("running", running);
  }

  function renderRunStatus() {
    const chat = currentChat();
    if (!chat || !chat.running) {
      el.run.dataset.state = "idle";
      el.run.textContent = "";
      return;
    }
    el.run.dataset.state = "running";
    const since = chat.startedAt ? chat.startedAt * 1000 : chat.runSince;
    const secs = since ? Math.max(0, Math.floor((Date.now() - since) / 1000)) : 0;
    el.run.textContent = "Working… " + secs + " s";
  }

  function setModel(name) {
    el.model.textContent = typeof name === "string" ? name : "";
  }

  // --- connection -----------------------------------------------------------------

  function setConn(s) {
    el.conn.dataset.state = s;
    el.conn.textContent = CONN_LABEL[s] || s;
    el.conn.title = "Connection: " + (CONN_LABEL[s] || s);
    el.app.dataset.conn = s;
  }

  function showBanner(text) {
    el.banner.textContent = text;
    el.banner.hidden = false;
  }

  function hideBanner() {
    el.banner.hidden = true;
    el.banner.textContent = "";
  }

  function isOpen() {
    return state.ws !== null && state.ws.readyState === WebSocket.OPEN;
  }

  function sendFrame(obj) {
    if (!isOpen()) return false;
    state.ws.send(typeof obj === "string" ? obj : JSON.stringify(obj));
    return true;
  }

  /* The server's secret, kept for this tab only (sessionStorage). */
  const SECRET_KEY = "trio_channel.secret";

  function storedSecret() {
    try {
      return sessionStorage.getItem(SECRET_KEY) || "";
    } catch (_) {
      return "";
    }
  }

  function storeSecret(value) {
    try {
      if (value) sessionStorage.setItem(SECRET_KEY, value);
      else sessionStorage.removeItem(SECRET_KEY);
    } catch (_) {
      /* storage off: the secret lasts until the page reloads */
    }
    state.secret = value;
  }

  function askForSecret(text) {
    el.secretLabel.textContent = text;
    el.secretForm.hidden = false;
    hideBanner();
    setConn("offline");
    el.secretInput.focus();
  }

  async function bootstrap() {
    let res;
    const secret = state.secret || storedSecret();
    const headers = secret ? { Authorization: "Bearer " + secret } : {};
    try {
      res = await fetch("/api/bootstrap", { cache: "no-store", credentials: "same-origin", headers });
    } catch (_) {
      throw new Error("The server cannot be reached.");
    }
    if (res.status === 401) {
      if (secret) storeSecret("");
      const err = new Error(
        secret
          ? "The server refused that secret. Type it again:"
          : "This server needs its secret to hand out connection tokens. Type it to connect:",
      );
      err.needsSecret = true;
      throw err;
    }
    if (res.ok) el.secretForm.hidden = true;
    if (!res.ok) {
      let detail = "";
      try {
        detail = (await res.text()).slice(0, 200);
      } catch (_) {
        /* ignore */
      }
      const why = {
        403: "Open this page on the machine the server runs on: it only hands out connection tokens to localhost.",
        404: "This server does not offer /api/bootstrap, so the page cannot connect.",
        429: "The server has handed out too many connection tokens; retrying.",
      }[res.status];
      throw new Error(why || "Could not get a connection token (HTTP " + res.status + (detail ? ": " + detail : "") + ").");
    }
    const boot = await res.json();
    if (!boot || typeof boot.token !== "string") throw new Error("The server's bootstrap answer has no token.");
    const ttl = Number(boot.expires_in) > 0 ? Number(boot.expires_in) * 1000 : 60000;
    state.apiToken = boot.token;
    state.apiTokenUntil = Date.now() + ttl - TOKEN_MARGIN_MS;
    if (typeof boot.model_name === "string" && boot.model_name) setModel(boot.model_name);
    return boot;
  }

  function socketUrl(boot) {
    let base = typeof boot.ws_url === "string" && boot.ws_url ? boot.ws_url : "";
    if (!base) {
      const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
      base = scheme + "//" + window.location.host + (boot.ws_path || "/");
    }
    const url = new URL(base, window.location.href);
    url.searchParams.set("client_id", state.clientId);
    url.searchParams.set("token", boot.token);
    return url.href;
  }

  async function connect() {
    if (state.connecting || state.ws) return;
    state.connecting = true;
    if (el.conn.dataset.state !== "offline") setConn(state.everOnline ? "reconnecting" : "connecting");
    let ws;
    try {
      const boot = await bootstrap();
      ws = new WebSocket(socketUrl(boot));
    } catch (err) {
      state.connecting = false;
      if (err.needsSecret) {
        askForSecret(err.message); // connects again once it is typed
        return;
      }
      if (state.failures >= 1 || !state.everOnline) showBanner(err.message);
      scheduleReconnect();
      return;
    }
    state.connecting = false;
    state.ws = ws;
    ws.onmessage = (e) => {
      if (state.ws === ws) onFrame(e.data);
    };
    ws.onclose = (e) => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.attached = new Set();
      state.pendingNewChat = false;
      if (e.code === 1009) {
        notice(currentChat(), "That message was too large for the server, which closed the connection.", "error");
      }
      scheduleReconnect();
    };
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  function scheduleReconnect() {
    if (state.reconnectTimer) return;
    const delay = Math.min(BACKOFF_CAP_MS, BACKOFF_FIRST_MS * 2 ** state.failures * (0.8 + Math.random() * 0.4));
    state.failures += 1;
    setConn(state.failures > OFFLINE_AFTER || navigator.onLine === false ? "offline" : "reconnecting");
    state.reconnectTimer = setTimeout(() => {
      state.reconnectTimer = 0;
      connect();
    }, delay);
  }

  function reconnectNow() {
    if (state.ws || state.connecting) return;
    if (state.reconnectTimer) clearTimeout(state.reconnectTimer);
    state.reconnectTimer = 0;
    connect();
  }

  // --- chats: open, attach, history, sidebar ------------------------------------

  function chatFromHash() {
    let id = "";
    try {
      id = decodeURIComponent(window.location.hash.replace(/^#/, ""));
    } catch (_) {
      return null; // malformed %-escape
    }
    return CHAT_ID_RE.test(id) ? id : null;
  }

  function chatTitle(chat) {
    return chat.title || (chat.hasContent ? "Chat " + chat.id.slice(0, 8) : "New chat");
  }

  /* Put the open chat in the address (#chat_id) once it has something in it,
   * so a reload or a bookmark reopens it. */
  function rememberChat(chat) {
    if (chat.id !== state.current || chatFromHash() === chat.id) return;
    const url = window.location.pathname + window.location.search;
    if (chat.hasContent || chat.historyState !== "done") history.replaceState(null, "", url + "#" + chat.id);
    else if (window.location.hash) history.replaceState(null, "", url);
  }

  async function openChat(id) {
    if (!CHAT_ID_RE.test(id)) return;
    const chat = chatView(id);
    state.current = id;
    for (const other of state.chats.values()) other.log.hidden = other !== chat;
    el.title.textContent = chatTitle(chat);
    rememberChat(chat);
    renderRunStatus();
    renderSidebar();
    closeSidebar();
    scrollToBottom();
    if (chat.historyState === "none") {
      chat.historyState = "loading";
      try {
        await loadHistory(chat);
      } finally {
        chat.historyState = "done";
      }
      if (chat.id === state.current) {
        el.title.textContent = chatTitle(chat);
        scrollToBottom();
      }
      renderSidebar();
    }
    attach(chat);
  }

  /* Subscribe this socket to `chat`, replaying what it has not shown yet. */
  function attach(chat) {
    if (!chat || chat.historyState === "loading") return; // openChat attaches after
    if (!isOpen() || state.attached.has(chat.id)) return;
    if (sendFrame({ type: "attach", chat_id: chat.id, since_seq: chat.lastSeq })) {
      state.attached.add(chat.id);
    }
  }

  async function getApiToken() {
    if (state.apiToken && Date.now() < state.apiTokenUntil) return state.apiToken;
    await bootstrap();
    return state.apiToken;
  }

  async function apiGet(path) {
    let token = await getApiToken();
    const get = () =>
      fetch(path, { cache: "no-store", credentials: "same-origin", headers: { Authorization: "Bearer " + token } });
    let res = await get();
    if (res.status === 401) {
      state.apiToken = "";
      token = await getApiToken();
      res = await get();
    }
    return res;
  }

  /* Best effort: the chat as GET /api/sessions/{key}/webui-thread restores
   * it (the route nanobot's own web UI reloads from): a row per user message
   * and, per reply, an activity row (tool hints, file edits) and an answer
   * row. Its last_seq is where the attach that follows resumes, so nothing
   * is missed or shown twice. */
  async function loadHistory(chat) {
    let body;
    try {
      const res = await apiGet("/api/sessions/" + encodeURIComponent("websocket:" + chat.id) + "/webui-thread");
      if (!res.ok) return; // 404: nothing said in this chat yet
      body = await res.json();
    } catch (_) {
      return;
    }
    if (!body || !Array.isArray(body.messages) || chat.lastSeq > 0) return;
    if (Number.isInteger(body.first_seq) && body.first_seq > 1) {
      notice(chat, errorText({ detail: "history_truncated", first_seq: body.first_seq }), "info");
    }
    for (const row of body.messages) {
      if (row && typeof row === "object") update(chat, () => renderThreadRow(chat, row));
    }
    if (Number.isInteger(body.last_seq)) chat.lastSeq = Math.max(chat.lastSeq, body.last_seq);
  }

  function renderThreadRow(chat, row) {
    const text = typeof row.content === "string" ? row.content : "";
    const media = (Array.isArray(row.media) ? row.media : []).filter((m) => m && typeof m === "object");
    if (row.role === "user") {
      const urls = media.map((m) => safeMediaUrl(m.url)).filter(Boolean);
      const missing = media.length - urls.length;
      renderUserMessage(chat, text, urls, missing > 0 ? missing + (missing === 1 ? " attachment" : " attachments") : "");
      if (!chat.title && text.trim()) chat.title = text.trim().slice(0, 60);
    } else if (row.kind === "trace") {
      for (const line of Array.isArray(row.traces) ? row.traces : []) {
        if (typeof line === "string" && line) renderAgentMessage(chat, { text: line, kind: "tool_hint" });
      }
      if (Array.isArray(row.fileEdits) && row.fileEdits.length) renderFileEdit(chat, { edits: row.fileEdits });
    } else if (row.role === "assistant") {
      if (typeof row.reasoning === "string" && row.reasoning) {
        const key = { row: String(row.id) };
        openReasoning(chat, key).body.append(row.reasoning);
        endReasoning(chat, key);
      }
      if (text || media.length) renderAgentMessage(chat, { text, media_urls: media });
      const took = formatDuration(row.latencyMs);
      if (took) chat.log.appendChild(make("div", "meta turn-end", "Replied in " + took));
    }
  }

  function refreshSessionsSoon() {
    if (state.sessionsTimer) return;
    state.sessionsTimer = setTimeout(() => {
      state.sessionsTimer = 0;
      refreshSessions();
    }, 500);
  }

  async function refreshSessions() {
    if (state.sessionsBusy) {
      state.sessionsAgain = true;
      return;
    }
    state.sessionsBusy = true;
    try {
      const res = await apiGet("/api/sessions");
      if (res.ok) {
        const body = await res.json();
        state.sessions = Array.isArray(body && body.sessions) ? body.sessions : [];
        el.sessionsNote.hidden = true;
      } else {
        el.sessionsNote.textContent = "Could not load the chat list (HTTP " + res.status + ").";
        el.sessionsNote.hidden = false;
      }
    } catch (_) {
      /* offline: the list stays as it was */
    } finally {
      state.sessionsBusy = false;
    }
    renderSidebar();
    if (state.sessionsAgain) {
      state.sessionsAgain = false;
      refreshSessions();
    }
  }

  function renderSidebar() {
    const entries = [];
    const seen = new Set();
    const cur = currentChat();
    for (const s of state.sessions) {
      const id = s && typeof s.chat_id === "string" ? s.chat_id : "";
      if (!CHAT_ID_RE.test(id) || seen.has(id)) continue;
      seen.add(id);
      entries.push({ id, updated: s.updated_at, running: s.run_started_at != null });
    }
    if (cur && !seen.has(cur.id)) entries.unshift({ id: cur.id, updated: null, running: false });
    const items = entries.map((entry) => {
      const chat = state.chats.get(entry.id);
      const li = make("li");
      const button = make("button", "chat-item");
      button.type = "button";
      button.dataset.chatId = entry.id;
      if (chat ? chat.running : entry.running) button.classList.add("running");
      if (cur && cur.id === entry.id) button.setAttribute("aria-current", "true");
      const name = chat ? chatTitle(chat) : "Chat " + entry.id.slice(0, 8);
      button.append(make("span", "chat-name", name), make("span", "chat-time", formatTime(entry.updated)));
      button.title = entry.id;
      li.appendChild(button);
      return li;
    });
    el.chatList.replaceChildren(...items);
  }

  function openSidebar() {
    el.app.classList.add("sidebar-open");
    el.backdrop.hidden = false;
    el.menu.setAttribute("aria-expanded", "true");
  }

  function closeSidebar() {
    el.app.classList.remove("sidebar-open");
    el.backdrop.hidden = true;
    el.menu.setAttribute("aria-expanded", "false");
  }

  // --- composer: text, attachments, sending ---------------------------------

  function composerError(text) {
    el.composerError.textContent = text || "";
    el.composerError.hidden = !text;
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result));
      reader.onerror = () => reject(reader.error || new Error("read failed"));
      reader.readAsDataURL(file);
    });
  }

  function addFiles(files) {
    let problem = "";
    for (const file of files) {
      if (!IMAGE_TYPES.includes((file.type || "").toLowerCase())) problem = REJECTION.mime;
      else if (file.size > IMAGE_MAX_BYTES) problem = REJECTION.size;
      else if (state.attachments.length >= MAX_IMAGES) problem = REJECTION.too_many_images;
      else {
        const dataUrl = readAsDataUrl(file);
        dataUrl.catch(() => {}); // reported when sending
        state.attachments.push({
          name: file.name || "pasted-image",
          preview: URL.createObjectURL(file),
          dataUrl,
        });
      }
    }
    composerError(problem);
    renderAttachments();
  }

  function removeAttachment(index) {
    const [gone] = state.attachments.splice(index, 1);
    if (gone) URL.revokeObjectURL(gone.preview);
    composerError("");
    renderAttachments();
  }

  function renderAttachments() {
    const items = state.attachments.map((att, index) => {
      const li = make("li", "attachment");
      const img = make("img");
      img.alt = "";
      img.src = att.preview;
      const remove = make("button", "remove", "×");
      remove.type = "button";
      remove.setAttribute("aria-label", "Remove " + att.name);
      remove.addEventListener("click", () => removeAttachment(index));
      li.append(img, make("span", "attachment-name", att.name), remove);
      return li;
    });
    el.attachments.replaceChildren(...items);
    el.attachments.hidden = items.length === 0;
  }

  async function sendMessage() {
    if (state.sending) return;
    const text = el.input.value;
    const atts = state.attachments.slice();
    if (!text.trim() && !atts.length) return;
    const chat = currentChat();
    if (!isOpen() || !chat) {
      composerError("Not connected. Your message is kept here; send it again once the status shows Online.");
      return;
    }
    if (atts.length > MAX_IMAGES) {
      composerError(REJECTION.too_many_images);
      return;
    }
    state.sending = true;
    try {
      let media = [];
      try {
        media = await Promise.all(atts.map((a) => a.dataUrl));
      } catch (_) {
        composerError(REJECTION.malformed);
        return;
      }
      const envelope = { type: "message", chat_id: chat.id, content: text, webui: true };
      if (media.length) envelope.media = media.map((dataUrl, i) => ({ data_url: dataUrl, name: atts[i].name }));
      const frame = JSON.stringify(envelope);
      if (frame.length > MAX_FRAME_CHARS) {
        composerError("These images are too large to send together; send fewer at a time.");
        return;
      }
      if (!sendFrame(frame)) {
        composerError("Not connected. Your message is kept here; send it again once the status shows Online.");
        return;
      }
      state.attached.add(chat.id); // a message subscribes its chat
      const b = renderUserMessage(chat, text, atts.map((a) => a.preview));
      state.lastSent = { chat: chat.id, bubble: b };
      if (!chat.title) {
        chat.title = text.trim().slice(0, 60) || "Images";
        if (chat.id === state.current) el.title.textContent = chat.title;
      }
      el.input.value = "";
      state.attachments = []; // previews now belong to the sent bubble
      renderAttachments();
      composerError("");
      rememberChat(chat);
      autosize();
      scrollToBottom();
      renderSidebar();
      refreshSessionsSoon();
    } finally {
      state.sending = false;
    }
  }

  function autosize() {
    el.input.style.height = "auto";
    el.input.style.height = Math.min(el.input.scrollHeight, 200) + "px";
  }

  // --- wiring -----------------------------------------------------------------------

  el.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    sendMessage();
  });

  el.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      sendMessage();
    }
  });

  el.input.addEventListener("input", autosize);

  el.input.addEventListener("paste", (e) => {
    const data = e.clipboardData;
    if (!data) return;
    const files = [];
    for (const item of data.items) {
      if (item.kind === "file") {
        const file = item.getAsFile();
        if (file) files.push(file);
      }
    }
    if (!files.length) return;
    if (!data.types.includes("text/plain")) e.preventDefault();
    addFiles(files);
  });

  el.fileInput.addEventListener("change", () => {
    addFiles(Array.from(el.fileInput.files || []));
    el.fileInput.value = ""; // choosing the same file again fires change again
  });

  el.composer.addEventListener("dragover", (e) => {
    if (e.dataTransfer && Array.from(e.dataTransfer.types).includes("Files")) {
      e.preventDefault();
      el.composer.classList.add("dragging");
    }
  });
  el.composer.addEventListener("dragleave", () => el.composer.classList.remove("dragging"));
  el.composer.addEventListener("drop", (e) => {
    el.composer.classList.remove("dragging");
    if (e.dataTransfer && e.dataTransfer.files.length) {
      e.preventDefault();
      addFiles(Array.from(e.dataTransfer.files));
    }
  });

  el.newChat.addEventListener("click", () => {
    if (!sendFrame({ type: "new_chat" })) {
      composerError("Not connected. Try again once the status shows Online.");
      return;
    }
    state.pendingNewChat = true;
  });

  el.chatList.addEventListener("click", (e) => {
    const button = e.target.closest(".chat-item");
    if (button && button.dataset.chatId) openChat(button.dataset.chatId);
  });

  el.menu.addEventListener("click", () => {
    if (el.app.classList.contains("sidebar-open")) closeSidebar();
    else openSidebar();
  });
  el.backdrop.addEventListener("click", closeSidebar);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") closeSidebar();
  });

  window.addEventListener("hashchange", () => {
    const id = chatFromHash();
    if (id && id !== state.current) openChat(id);
  });
  window.addEventListener("online", reconnectNow);
  window.addEventListener("offline", () => {
    if (!isOpen()) setConn("offline");
  });

  setInterval(() => {
    if (currentChat() && currentChat().running) renderRunStatus();
  }, 1000);

  renderAttachments();
  setConn("connecting");
  el.secretForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const value = el.secretInput.value;
    if (!value) return;
    el.secretInput.value = "";
    el.secretForm.hidden = true;
    storeSecret(value);
    reconnectNow();
  });

  connect();
})();
