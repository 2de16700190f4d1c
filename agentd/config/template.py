"""The agentd.toml that `agentd init` writes: every setting, commented out at its default,
with a line on what it does. Kept beside the parsers so a new setting is documented next
to where it is defined.

Table headers are commented out too: TOML puts a key in the last table declared above it,
so one live `[bridge]` header would swallow a `model = …` appended at the end, and a
person's own `[bridge]` block would declare the table twice. With every line a comment,
anything appended (or uncommented with its header) lands where it reads.
"""

DEFAULT_CONFIG = '''\
# agentd settings for this home. Each commented line shows the default. To change one,
# uncomment it (with its [table] line) or append it at the end. Keys without a table
# (model, max_steps, ...) must come before the first uncommented [table] line.

# The model, as provider:model. When unset: $AGENTD_MODEL, else the first provider whose
# key is set (ANTHROPIC_API_KEY → anthropic:claude-sonnet-5-5,
# OPENAI_API_KEY → openai:gpt-5.4-mini).
# Providers: anthropic:<model>, openai:<model>, ollama:<model>, <name>:<model> for an endpoint
# declared below, replay:<file.jsonl> to replay a recorded run (agentd run --record FILE).
# model = "anthropic:claude-sonnet-5-5"

# Model calls per turn before the turn is stopped.
# max_steps = 30

# Models tried in order when `model` is throttled (429, 529 overloaded), times out or is
# down (5xx, refused connection), after its retries. A throttled model is then skipped by
# every turn for [throttling] cooldown. Auth and request errors (401/403/400/404) never
# fall back: they would fail again. A turn may switch models between steps.
# fallbacks = []           # e.g. ["openai:gpt-5.4-mini", "ollama:qwen3:8b"]

# Where an interactive turn (agentd run, agentd chat) goes on once a money cap of [budget]
# is reached, e.g. a local model. Background turns (heartbeat, cron, inbox) stop instead.
# budget_fallback = ""     # e.g. "ollama:qwen3:8b"

# [sandbox]
# "bwrap": bash runs under bubblewrap (root read-only, home and workdir writable, no network).
# "off": bash runs unsandboxed on the host; agentd warns on every turn.
# mode = "bwrap"
# timeout = 120        # seconds per command; the whole process tree is killed after it
# output_limit = 30000 # characters of command output shown to the model (head + tail kept)
# tmp_size_mb = 256    # size of the sandbox's private /tmp (and of /dev/shm and each mask)
# network = "none"     # "allowlist": HTTP(S) only to allow_domains, through agentd's proxy
#                      # (needs agentd as root); "full": everything (warned on every turn)
# allow_domains = ["pypi.org", "files.pythonhosted.org", "*.github.com"]
# When agentd runs as root, commands run as this user (a name or a number; gid defaults to
# its primary group), and the home's writable parts are handed over to it each turn.
# uid = 65534          # nobody; better: a dedicated user, e.g. "agentd-sandbox"
# gid = 65534
# Limits per command (0 = no limit). `agentd doctor` says which limits this host enforces.
# cpu_seconds = 300    # CPU time per process
# memory_mb = 2048     # address space per process
# file_size_mb = 256   # largest file a command may write
# open_files = 1024
# processes = 256

# Providers. Keys are read from the environment variable named by key_env, never from here.
# [providers.anthropic]
# base_url = "https://api.anthropic.com"   # default: $ANTHROPIC_BASE_URL or the SDK's
# key_env = "ANTHROPIC_API_KEY"
# max_retries = 2        # retries of a throttled or failed call, honouring Retry-After
# context_window = 200000  # tokens; default from the table in agentd/compact.py
# [providers.openai]
# base_url = "https://api.openai.com/v1"   # default: $OPENAI_BASE_URL or the SDK's
# key_env = "OPENAI_API_KEY"
# [providers.ollama]
# base_url = "http://localhost:11434/v1"

# A named OpenAI-compatible server (llama.cpp `llama-server --jinja`, vLLM, LM Studio),
# used as "lmstudio:<model>":
# [providers.lmstudio]
# protocol = "openai"
# base_url = "http://localhost:1234/v1"
# key_env = "LMSTUDIO_API_KEY"   # omit when the server needs no key
# profile = "lmstudio"   # the server's quirks (README "Local models"); guessed when omitted
# context_window = 32768

# The heartbeat (`agentd daemon`/`agentd start`): a periodic wake-up that reads
# memory/HEARTBEAT.md. Items whose conditions hold (an interval, a shell gate) run together
# in one turn; a tick with nothing due makes no model call. Durations: 90s, 15m, 2h, 1d.
# [heartbeat]
# enabled = true
# every = "30m"
# active_hours = ""      # e.g. "08:00-22:00" (may wrap past midnight); empty: always
# timezone = ""          # e.g. "Europe/Berlin"; empty: this machine's. Also cron's default
# model = ""             # e.g. a cheaper "anthropic:claude-haiku-5-5"; empty: `model` above
# gate_timeout = "30s"   # per gate command (also capped by sandbox.timeout)

# The daemon: one queue, one turn at a time (person > heartbeat > cron > inbox).
# [daemon]
# queue_limit = 100          # waiting turns; when full, a new one is dropped and logged
#                            # (inbox files stay in inbox/ and are picked up later)
# catch_up = "6h"            # a cron run missed while the daemon was down runs once on
#                            # start when it is this recent; older ones are skipped
# stop_timeout = "5m"        # `agentd stop` waits this long for a running turn to commit
# inbox_max_bytes = 200000   # larger inbox files are refused with a note in outbox/
# watch = "auto"             # "auto": inotify, polling if it fails; "poll": always poll
#                            # (network filesystems, VM bind mounts)

# What one turn's commit may take. Larger files stay on disk, uncommitted, and are named in
# the commit and the day log, so no turn can bloat the home's history for good.
# [git]
# max_file_mb = 10           # largest file committed
# max_commit_mb = 50         # most one commit adds

# Spending caps in USD (none by default), checked before every model call against the
# usage ledger (.agentd/usage.jsonl; see `agentd usage`); days and months in local time.
# Free models (ollama) never hit a money cap; a model without a price (cost unknown)
# counts only against max_tokens_per_turn: give it a price under [prices] to cap it.
# [budget]
# daily_usd = 5.0
# monthly_usd = 50.0
# max_tokens_per_turn = 2000000  # any turn stops here, whatever it costs
# [budget.triggers]              # daily caps per trigger kind
# heartbeat = 0.50
# cron = 1.00

# The bounds of one model call: an output cap sent with every request (a reply cut there
# is told to finish once, then the turn ends `truncated`), no bytes for idle_timeout, or
# the whole call past call_timeout, ends the call (and a fallback model takes over).
# [calls]
# max_tokens = 8192
# idle_timeout = "2m"
# call_timeout = "10m"
# [calls.models]                 # per model, or per provider
# "local" = 2048

# A model still failing after its retries is skipped for `cooldown` (or its Retry-After,
# when longer, up to 1h). A Retry-After longer than max_retry_wait is not waited for.
# [throttling]
# cooldown = "5m"
# max_retry_wait = "30s"

# Disk limits of untrusted turns (webhooks, inbox files, non-owner chat senders), which
# may write only outbox/ and a scratch folder. Per turn: what the turn creates or changes
# there; past it, its newest files are removed before the commit and the model is told.
# A home (.git included) over home_mb refuses untrusted turns. 0 = no limit.
# [quota]
# untrusted_outbox_mb = 20
# untrusted_outbox_files = 100
# home_mb = 1024

# Past `threshold` of the model's context window, older messages are summarised in what
# is sent (the transcript keeps them); about `keep` of the window stays verbatim, and old
# tool outputs are cut to `tool_output` characters.
# [compaction]
# enabled = true
# threshold = 0.8
# keep = 0.3
# tool_output = 2000

# The skills index in every prompt: name, description and path of each skills/ folder.
# Past index_chars characters, it holds the skills most relevant to the turn's task and a
# line saying how many more exist (`ls skills/`, `agentd skills`).
# [skills]
# index_chars = 6000

# Prices in USD per million tokens, overriding the built-in table (agentd/usage.py).
# [prices."openai:my-model"]
# input = 1.0
# output = 4.0
# cache_read = 0.1
# cache_write = 0.0

# The chat bridge (`agentd serve`, or the daemon with enabled = true): an OpenAI-compatible
# endpoint (/v1/chat/completions, /v1/models), signed webhooks (/hooks/<name>, results at
# /runs/<id>), Telegram (/telegram) and Slack (/slack/events). Secrets never go in this
# file: the Bearer token comes from $AGENTD_BRIDGE_TOKEN or token_file, the shared webhook
# secret from $AGENTD_WEBHOOK_SECRET or secret_file (files outside the home, e.g. in
# ~/.config/agentd/, chmod 600). Without a token it refuses to start.
# [bridge]
# enabled = false          # true: the daemon serves it as well
# host = "127.0.0.1"       # any other address: put a TLS proxy in front
# port = 8787
# token_file = ""
# secret_file = ""         # whsec_<base64> or raw; several, space-separated, while rotating
# max_body = 1048576       # bytes; larger requests get 413
# max_json_depth = 32
# ip_rate = 20.0           # requests per second per client address (before auth), then 429
# ip_burst = 200
# sender_rate = 2.0        # turns per second per sender (conversation, hook, chat user)
# sender_burst = 30
# retry_after = 30         # seconds a sender is told to wait when the queue is full (503)
# show_tools = false       # stream a line per tool call in chat completions
# max_event_chars = 50000  # of a webhook's JSON shown to the model
# dedupe_ttl = "48h"       # how long delivery ids are remembered (at least 24h)
# trusted_proxies = []     # addresses whose X-Forwarded-For is believed (a local proxy)
# header_timeout = "10s"   # to send a request head whole, else closed (slow-header floods)
# max_connections_per_ip = 50  # open at once per address (trusted proxies exempt)
# max_connections = 1000   # in all; when full, the longest-idle connection makes room
# [bridge.hooks.github]    # optional, per hook name
# secret_file = ""         # its own secret instead of the shared one (or secret_env = "VAR")
# callback_url = ""        # receives the result, signed like the request
# prompt = ""              # the task; {event} becomes the event, {name} the hook's name
# [bridge.telegram]
# enabled = false
# bot_token_file = ""      # else $AGENTD_TELEGRAM_BOT_TOKEN
# secret_file = ""         # setWebhook's secret_token; else $AGENTD_TELEGRAM_SECRET
# api_base = "https://api.telegram.org"
# chats = []               # chat ids that may talk to the agent; others are ignored
# owners = []              # user ids whose messages run trusted (the rest: untrusted)
# [bridge.slack]
# enabled = false
# signing_secret_file = "" # else $AGENTD_SLACK_SIGNING_SECRET
# bot_token_file = ""      # else $AGENTD_SLACK_BOT_TOKEN
# api_base = "https://slack.com/api"
# users = []               # user ids that may talk to the agent; others are ignored
# owners = []              # user ids whose messages run trusted
'''
