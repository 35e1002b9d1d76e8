"""A local NavTalk-compatible server: the demo's cloud and every end-to-end test's."""
