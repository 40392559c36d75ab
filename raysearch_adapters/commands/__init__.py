"""The command line: the parser (:mod:`.main`) and one handler module per subcommand. The library never
imports this package; handlers call the library and print."""
