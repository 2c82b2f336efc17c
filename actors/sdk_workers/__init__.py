"""SDK worker processes: the livekit SDK of some users' rooms runs in a process of its own.

One process can use about one core of the SDK's native threads (libwebrtc's
signaling and network threads, the FFI's callbacks into Python), and a join
storm in it delays the packets of every room it holds. Worker processes
spread the rooms over the machine's cores: the gRPC front door, the sessions
and their links stay in the bridge's process; only the rooms move. See the
README's "SDK worker processes".
"""
