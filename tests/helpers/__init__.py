"""What the tests share: builders, fakes of the clouds' APIs, and the fixtures over them.

Test modules import from here, never from another test module or a conftest.py. The modules that
define fixtures are loaded as plugins by tests/conftest.py (`pytest_plugins`), so a test names such a
fixture as an argument and imports nothing for it.
"""
