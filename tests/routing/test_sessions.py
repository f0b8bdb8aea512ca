"""The session-class memory behind classify hysteresis: bounded in age and in count."""

from proxy.routing.classify_route import SessionClasses, user_turns


def test_sessions_expire_and_are_bounded():
    now = [0.0]
    memory = SessionClasses(ttl_s=10.0, max_sessions=2, clock=lambda: now[0])
    memory.put("a", "code")
    now[0] = 9.0
    assert memory.get("a") == "code"
    memory.put("b", "chat")
    memory.put("a", "chat")      # refreshed: now the most recent
    memory.put("c", "code")      # over the bound: the least recently seen (b) goes
    assert memory.get("b") is None
    assert memory.get("a") == "chat" and memory.get("c") == "code"
    now[0] = 19.5
    assert memory.get("a") is None and memory.get("c") is None


def test_user_turns_reads_text_parts_and_skips_other_roles():
    body = (b'{"messages": [{"role": "system", "content": "be brief"},'
            b'{"role": "user", "content": "one"},'
            b'{"role": "assistant", "content": "ok"},'
            b'{"role": "user", "content": [{"type": "text", "text": "two"},'
            b'{"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]}'
            b']}')
    assert user_turns(body) == ["one", "two b"]
    assert user_turns(b"not json") == []
    many = b'{"messages": [%s]}' % b",".join(
        b'{"role": "user", "content": "t%d"}' % i for i in range(8))
    assert user_turns(many) == ["t4", "t5", "t6", "t7"]


def test_read_request_sees_tools_and_media():
    from proxy.routing.signals import read_request

    view = read_request(b'{"messages": [{"role": "user", "content": [{"type": "input_audio",'
                        b' "input_audio": {}}, {"type": "text", "text": "hi"}]}],'
                        b' "tools": [{"type": "function"}]}')
    assert view.turns == ["hi"] and view.tools and view.media
    view = read_request(b'{"messages": [{"role": "user", "content": "hi"}], "tools": []}')
    assert not view.tools and not view.media
