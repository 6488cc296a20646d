from lodger.cli import main

raise SystemExit(main())
