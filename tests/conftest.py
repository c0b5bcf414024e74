pytest_plugins = ["tests.dbfix", "tests.stackfix.plugin"]
