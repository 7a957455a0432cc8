"""`raises(exc, *fragments)`: the bad-input tests' pytest.raises that also checks the message names the fix."""
import pytest


def raises(exc, *fragments):
    """pytest.raises(exc) that also checks every fragment occurs in the message."""
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *err):
            handled = self.ctx.__exit__(*err)
            message = str(self.info.value)
            missing = [f for f in fragments if f not in message]
            assert not missing, f"message lacks {missing}: {message}"
            return handled
    return Check()
