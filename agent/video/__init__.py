"""Video helpers for the display: WebRTC peer policy, rendering, captions."""
