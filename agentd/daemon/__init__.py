"""The daemon: how the agent works while nobody is watching.

One asyncio process per home (`agentd daemon`, or `agentd start` in the background):

- scheduler.py  wires everything: APScheduler 3.x (AsyncIOScheduler, no job store: the
                schedules are rebuilt from the markdown files at start), signals, hot reload;
- heartbeat.py  memory/HEARTBEAT.md: items with zero-token conditions (intervals, gates);
- cron.py       cron/<name>.md: the file format and its APScheduler triggers;
- crontab.py    the live table of cron jobs: scheduling, catch-up, last results;
- inbox.py      files dropped in inbox/ become turns; answers land in outbox/;
- watcher.py    watchdog (inotify, polling as a fallback), debounced onto the event loop;
- recovery.py   what a killed daemon left behind: the turn in flight, a stale git lock;
- service.py    pid file, start/stop;
- units.py      the systemd units (user, and hardened system) and how to install them;
- status.py     the status file the daemon writes and `agentd status`/`agentd cron` read;
- warm.py       `agentd run`'s turns over .agentd/daemon/warm.sock (the warm path);
- warm_request.py  its request: the checks, the carried environment, what runs cold;

The queue, the turn records, the event log and the state files are agentd/jobs/ (shared
with the bridge); each trigger here builds an agentd.turn.TurnRequest for its turn.

Nothing here imports the LLM SDKs until a turn actually runs, so an idle daemon stays small.
"""
