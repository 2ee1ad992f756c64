from splitsim.cli import main

raise SystemExit(main())
