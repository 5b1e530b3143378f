from fastfree.cli import main

raise SystemExit(main())
