"""A local NavTalk-compatible server: the demo's cloud and every end-to-end test's.

One module per concern::

    cli          navtalk-agent emulator: flags, port check, exit status
    server       Emulator: the WebSocket server, the conformance log, the recognition worker
    session      one connection's I/O: socket, timers, speech queue, recognition, WebRTC
    rtc          the aiortc peer connection (avatar video + voice)
    brain        sans-I/O state machine (Phase enum): client frames in, outputs out
    outputs      what the brain asks the shell to do
    stats        what a client did in one connection (SessionStats)
    conformance  client-message shape checks and Violation kinds
    frames       server events built by the brain (function calls, errors, tool replies)
    script       the conversation script: loading, validation, readable replies
    recognizer   pocketsphinx constrained to the script's lines (or the order mode)
    vad          server VAD and the utterance recorder
    speech       a spoken response's frames, paced (transcript with the audio)
    faults       fault injection (flags, license tokens)
    tts          espeak-ng speech
    avatar       the drawn avatar whose mouth follows the voice
    media        the avatar's media clock, voice timeline and tracks
    tls          the self-signed certificate for wss://
"""
